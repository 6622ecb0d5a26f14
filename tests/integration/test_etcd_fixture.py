import etcd3


def test_real_etcd_answers(etcd_server) -> None:
    host, port = etcd_server.host, etcd_server.client_port
    client = etcd3.client(host=host, port=port)
    client.put("/fixture-check", b"ok")
    value, _ = client.get("/fixture-check")
    assert value == b"ok"
    client.delete("/fixture-check")
