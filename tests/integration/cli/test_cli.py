"""clusterctl against a real etcd: every command, both output formats, the exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from cli_records import KEY_BYTES, Cluster, assignment, ike
from click.testing import CliRunner

from cluster.cli.main import cli
from cluster.procs import free_port
from cluster.store.records import Assignment, NodeRecord

COMMANDS = [
    ["status"], ["health"], ["node", "list"], ["client", "list"], ["sa", "list"],
    ["sa", "show", "c0000001"], ["keyd", "list"], ["rebalance", "--dry-run"],
    ["node", "drain", "node-1"], ["node", "undrain", "node-1"], ["node", "remove", "node-1"],
    ["watch", "--count", "1"],
]


def run(*argv: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, list(argv), env=env, catch_exceptions=False)


def as_json(c: Cluster, *argv: str):  # type: ignore[no-untyped-def]
    result = run(*c.args(*argv, "-o", "json"))
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads(result.stdout)


def no_key_material(text: str) -> None:
    for blob in (KEY_BYTES, KEY_BYTES[:20], KEY_BYTES[12:32]):
        assert blob.hex() not in text.lower()


# -- reading -------------------------------------------------------------------------------


def test_status_both_formats(cluster: Cluster) -> None:
    doc = as_json(cluster, "status")
    assert doc["cluster"] == cluster.name
    assert doc["healthy"] is True
    assert doc["nodes"] == {"ready": 2, "draining": 0, "down": 0, "total": 2}
    assert (doc["keyd"], doc["clients"], doc["child_sas"], doc["handoffs"]) == (1, 3, 3, 0)
    assert doc["clients_per_node"] == {"node-1": 2, "node-2": 1}
    table = run(*cluster.args("status"))
    assert table.exit_code == 0
    assert "0 draining" in table.stdout and "node-1" in table.stdout


def test_node_list(cluster: Cluster) -> None:
    rows = as_json(cluster, "node", "list")
    assert [(r["id"], r["state"], r["clients"], r["address"]) for r in rows] == [
        ("node-1", "ready", 2, "10.30.0.11"), ("node-2", "ready", 1, "10.30.0.12")]
    table = run(*cluster.args("node", "list")).stdout
    assert "node-1" in table and "10.30.0.12" in table


def test_client_list(cluster: Cluster) -> None:
    rows = as_json(cluster, "client", "list")
    by_identity = {r["identity"]: r for r in rows}
    assert set(by_identity) == {"client1@example.net", "client2@example.net",
                                "client3@example.net"}
    c3 = by_identity["client3@example.net"]
    assert c3["virtual_ip"] == "10.99.0.3"
    assert c3["peer"] == "198.51.100.13:4500"
    assert c3["owner"] == "node-2"
    assert c3["child_sas"] == ["c0000003"]
    # the owner's published traffic, not its sequence numbers (102 / 52, with a jump)
    assert (c3["packets_out"], c3["packets_in"]) == (90, 40)
    assert (c3["bytes_in"], c3["bytes_out"], c3["bytes"]) == (4000, 9 << 20, 4000 + (9 << 20))
    c1 = by_identity["client1@example.net"]
    # a record without traffic counts: unknown, never the sequence numbers
    assert (c1["packets_in"], c1["packets_out"], c1["bytes"], c1["bytes_in"]) == (
        None, None, None, None)
    table = run(*cluster.args("client", "list")).stdout
    assert "client1@example.net" in table and "10.99.0.2" in table
    assert "bytes" in table and "9.0 MiB" in table


def test_sa_list_and_show_never_print_keys(cluster: Cluster) -> None:
    rows = as_json(cluster, "sa", "list")
    assert [r["spi_in"] for r in rows] == ["c0000001", "c0000002", "c0000003"]
    assert rows[0]["owner"] == "node-1" and rows[0]["seq"]["out_seq"] == 100
    shown = as_json(cluster, "sa", "show", "0xC0000002")
    assert shown["spi_out"] == "d0000002" and shown["identity"] == "client2@example.net"
    assert not {"enc_key_in", "enc_key_out", "integ_key_in", "integ_key_out"} & set(shown)
    for argv in (("sa", "list"), ("sa", "show", "c0000002"), ("client", "list"), ("status",)):
        for fmt in ("table", "json"):
            result = run(*cluster.args(*argv, "-o", fmt))
            assert result.exit_code == 0
            no_key_material(result.stdout)
    table = run(*cluster.args("sa", "show", "c0000002")).stdout
    assert "d0000002" in table and "aes128gcm16" in table


def test_sa_show_unknown_and_bad_spi(cluster: Cluster) -> None:
    missing = run(*cluster.args("sa", "show", "0badc0de"))
    assert missing.exit_code == 1
    assert "no Child SA with inbound SPI 0badc0de" in missing.stderr
    bad = run(*cluster.args("sa", "show", "not-an-spi"))
    assert bad.exit_code == 2


def test_keyd_list(cluster: Cluster) -> None:
    rows = as_json(cluster, "keyd", "list")
    assert rows == [{"id": "keyd-1", "address": "10.30.0.5", "version": "0.1.0",
                     "started_at": rows[0]["started_at"], "ike_sas": 3}]
    assert "keyd-1" in run(*cluster.args("keyd", "list")).stdout


# -- health and its exit status --------------------------------------------------------------


def test_health_ok_then_degraded(cluster: Cluster) -> None:
    ok = run(*cluster.args("health", "-o", "json"))
    assert ok.exit_code == 0 and json.loads(ok.stdout) == {"healthy": True, "findings": []}
    assert run(*cluster.args("health")).exit_code == 0
    # node-2 dies (its record is gone) while it still owns client3
    cluster.store.delete(NodeRecord, "node-2")
    bad = run(*cluster.args("health", "-o", "json"))
    assert bad.exit_code == 1
    checks = {f["check"] for f in json.loads(bad.stdout)["findings"]}
    assert "node-down" in checks
    table = run(*cluster.args("health"))
    assert table.exit_code == 1 and "DEGRADED" in table.stdout
    rows = as_json(cluster, "node", "list")
    assert {"id": "node-2", "state": "down", "clients": 1}.items() <= rows[-1].items()


def test_health_without_keyd(cluster: Cluster) -> None:
    from cluster.store.records import KeydRecord
    cluster.store.delete(KeydRecord, "keyd-1")
    result = run(*cluster.args("health", "-o", "json"))
    assert result.exit_code == 1
    assert "keyd" in {f["check"] for f in json.loads(result.stdout)["findings"]}


# -- changing ------------------------------------------------------------------------------


def test_drain_and_undrain_keep_the_nodes_lease(cluster: Cluster) -> None:
    result = run(*cluster.args("node", "drain", "node-1", "-o", "json"))
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"id": "node-1", "state": "draining", "changed": True}
    stored = cluster.store.get(NodeRecord, "node-1")
    assert stored is not None
    assert stored.record.state == "draining" and stored.lease_id == cluster.lease
    again = run(*cluster.args("node", "drain", "node-1"))
    assert again.exit_code == 0 and "already draining" in again.stdout
    assert as_json(cluster, "status")["nodes"]["draining"] == 1
    assert run(*cluster.args("node", "undrain", "node-1")).exit_code == 0
    stored = cluster.store.get(NodeRecord, "node-1")
    assert stored is not None
    assert stored.record.state == "ready" and stored.lease_id == cluster.lease


def test_drain_unknown_node_and_bad_name(cluster: Cluster) -> None:
    unknown = run(*cluster.args("node", "drain", "node-9"))
    assert unknown.exit_code == 1 and "no node 'node-9'" in unknown.stderr
    assert run(*cluster.args("node", "drain", "bad/name")).exit_code == 2


def test_rebalance_dry_run_then_handoff(cluster: Cluster) -> None:
    run(*cluster.args("node", "drain", "node-1"))
    plan = as_json(cluster, "rebalance", "--dry-run")
    assert plan["dry_run"] is True
    moved = {m["ike_sa_id"] for m in plan["moves"]}
    on_node1 = {rec.ike_sa_id for rec in cluster.ike[:2]}
    assert on_node1 <= moved
    assert all(m["result"] == "planned" for m in plan["moves"])
    for ike_id in on_node1:  # nothing written by a dry run
        a = cluster.store.get(Assignment, ike_id)
        assert a is not None and a.record.phase == "active" and a.record.node == "node-1"
    table = run(*cluster.args("rebalance", "--dry-run"))
    assert table.exit_code == 0 and "planned moves (dry run)" in table.stdout
    done = as_json(cluster, "rebalance")
    assert done["conflicts"] == 0
    for ike_id in on_node1:
        a = cluster.store.get(Assignment, ike_id)
        assert a is not None
        assert (a.record.phase, a.record.node, a.record.previous_node, a.record.epoch) == (
            "handoff", "node-2", "node-1", 2)
    # the hand-offs are now in progress: planned again, nothing more to start for them
    again = as_json(cluster, "rebalance", "--dry-run")
    assert not on_node1 & {m["ike_sa_id"] for m in again["moves"]}


def test_rebalance_moves_misplaced_clients(cluster: Cluster) -> None:
    """With every client on node-1, the rendezvous plan moves some of them to node-2."""
    extra = [ike(i, f"extra{i}@example.net", f"10.99.1.{i}") for i in range(10, 30)]
    for rec in extra:
        cluster.store.put(rec)
        cluster.store.put(assignment(rec, "node-1"))
    plan = as_json(cluster, "rebalance", "--dry-run", "--limit", "100")
    moves = plan["moves"]
    assert moves and all(m["from"] == "node-1" and m["to"] == "node-2" for m in moves)
    assert all(m["reason"] == "rebalance" for m in moves)
    limited = as_json(cluster, "rebalance", "--dry-run", "--limit", "1")
    assert len(limited["moves"]) == 1


def test_node_remove(cluster: Cluster) -> None:
    refused = run(*cluster.args("node", "remove", "node-2"))
    assert refused.exit_code == 1 and "still owns 1 client" in refused.stderr
    assert cluster.store.get(NodeRecord, "node-2") is not None
    cluster.store.delete(Assignment, cluster.ike[2].ike_sa_id)
    removed = run(*cluster.args("node", "remove", "node-2", "-o", "json"))
    assert removed.exit_code == 0 and json.loads(removed.stdout)["removed"] is True
    assert cluster.store.get(NodeRecord, "node-2") is None
    assert run(*cluster.args("node", "remove", "node-2")).exit_code == 1
    forced = run(*cluster.args("node", "remove", "node-1", "--force"))
    assert forced.exit_code == 0


# -- watch -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "table"])
def test_watch_streams_events(cluster: Cluster, fmt: str) -> None:
    argv = [sys.executable, "-m", "cluster.cli", *cluster.args("watch", "--count", "2",
                                                               "-o", fmt)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stderr is not None  # it says when it watches; earlier events are not shown
        assert proc.stderr.readline().startswith(f"watching /ipsec-cluster/{cluster.name}/")
        cluster.store.update_if(
            NodeRecord("node-2", "10.30.0.12", 100, "draining", 4501, "0.1.0", 1.0),
            cluster.store.get(NodeRecord, "node-2").mod_revision)  # type: ignore[union-attr]
        newcomer = ike(7, "new@example.net", "10.99.0.7")
        cluster.store.put(newcomer)
        cluster.store.put(assignment(newcomer, "node-1"))
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    assert proc.returncode == 0, err
    if fmt == "table":
        lines = out.splitlines()
        assert lines[0].startswith("node-draining rev ") and "node=node-2" in lines[0]
        assert lines[1].startswith("client-up rev ")
        assert "client=new@example.net" in lines[1] and "node=node-1" in lines[1]
        return
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["event"] for e in events] == ["node-draining", "client-up"]
    assert events[1]["client_id"] == "new@example.net" and events[1]["node"] == "node-1"


# -- connection, environment, exit codes -----------------------------------------------------


def test_environment_and_flag_precedence(cluster: Cluster) -> None:
    env = {"CLUSTERCTL_ENDPOINTS": cluster.endpoint, "CLUSTERCTL_CLUSTER": cluster.name,
           "CLUSTERCTL_OUTPUT": "json"}
    rows = json.loads(run("node", "list", env=env).stdout)
    assert len(rows) == 2
    # a flag after the command beats the environment
    other = run("node", "list", "--cluster", "emptycluster", env=env)
    assert other.exit_code == 0 and json.loads(other.stdout) == []
    table = run("node", "list", "-o", "table", env=env)
    assert "node-1" in table.stdout and not table.stdout.lstrip().startswith("[")


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a))
def test_unreachable_etcd_is_one_line(argv: list[str]) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = run("--endpoints", endpoint, "--timeout", "1", *argv)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and endpoint in lines[0] and lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    assert time.monotonic() - started < 60


def test_unreachable_etcd_from_the_console_script() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    done = subprocess.run([sys.executable, "-m", "cluster.cli", "--endpoints", endpoint,
                           "status"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert done.stderr.strip() == (f"error: etcd at {endpoint} is unavailable: "
                                   "connection failed")
    assert done.stdout == ""


@pytest.mark.parametrize("argv", [
    ["node", "list", "--bogus"], ["node", "list", "-o", "yaml"], ["node"], ["nosuchcommand"],
    ["rebalance", "--limit", "0"], ["--cluster", "bad/name", "status"],
    ["--cert", "/tmp/x.pem", "status"], ["--endpoints", "foo", "status"],
    ["--endpoints", "ftp://h:1", "status"],
], ids=lambda a: " ".join(a))
def test_usage_errors_exit_2(argv: list[str]) -> None:
    result = run(*argv)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_config_file_supplies_etcd_and_cluster(cluster: Cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[cluster]\nname = "{cluster.name}"\n\n[etcd]\n'
                   f'endpoints = ["{cluster.endpoint}"]\n')
    rows = json.loads(run("--config", str(cfg), "node", "list", "-o", "json").stdout)
    assert [r["id"] for r in rows] == ["node-1", "node-2"]
    broken = tmp_path / "broken.toml"
    broken.write_text("[etcd\n")
    result = run("--config", str(broken), "status")
    assert result.exit_code == 1 and str(broken) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unknown_lab_is_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {"IPSEC_CLUSTER_LAB_ROOT": str(tmp_path)}
    result = run("--lab", "nosuchlab", "status", env=env)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "nosuchlab" in lines[0] and "Traceback" not in result.output


def test_tls_with_client_certificate(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """etcdctl-style --cacert/--cert/--key against an etcd that requires client certificates."""
    from cli_records import node

    from cluster.pki import CertAuthority
    from cluster.procs import EtcdServer
    from cluster.store.client import Store
    from cluster.store.keyspace import Keyspace

    ca = CertAuthority.create("test etcd CA")
    ca_pem = tmp_path / "ca.pem"
    ca_pem.write_bytes(ca.cert_pem())
    server_cert, server_key = ca.issue("etcd", ["localhost", "127.0.0.1"]).write_pem(
        tmp_path / "server.pem", tmp_path / "server-key.pem")
    cert, key = ca.issue("operator", ["operator.example.net"], server=False).write_pem(
        tmp_path / "operator.pem", tmp_path / "operator-key.pem")
    server = EtcdServer(tmp_path / "etcd", tls=(ca_pem, server_cert, server_key))
    server.start()
    try:
        with Store([server.endpoint], Keyspace("tls"), cacert=str(ca_pem), cert=str(cert),
                   key=str(key)) as writer:
            writer.put(node("node-1", "10.30.0.11"))
        tls = ["--endpoints", server.endpoint, "--cluster", "tls", "--cacert", str(ca_pem)]
        ok = run(*tls, "--cert", str(cert), "--key", str(key), "node", "list", "-o", "json")
        assert ok.exit_code == 0, ok.stderr
        assert [r["id"] for r in json.loads(ok.stdout)] == ["node-1"]
        refused = run(*tls, "--timeout", "2", "node", "list")   # no client certificate
        assert refused.exit_code == 1
        assert len(refused.stderr.strip().splitlines()) == 1
        assert server.endpoint in refused.stderr and "Traceback" not in refused.output
        missing = run(*tls, "--cert", str(tmp_path / "nope.pem"), "--key", str(key),
                      "node", "list")
        assert missing.exit_code == 1 and "nope.pem" in missing.stderr
    finally:
        server.stop()


def test_client_redirect_writes_requests_for_keyd(cluster: Cluster) -> None:
    from cluster.store.records import RedirectRequest

    first = cluster.ike[0].ike_sa_id
    rows = as_json(cluster, "client", "redirect", first, "--to", "vpn2.example.net")
    assert rows == [{"ike_sa_id": first, "identity": "client1@example.net",
                     "gateway": "vpn2.example.net"}]
    got = cluster.store.get(RedirectRequest, first)
    assert got is not None and got.record.gateway == "vpn2.example.net"
    rows = as_json(cluster, "client", "redirect", "--identity", "client3@example.net",
                   "--to", "198.51.100.50")
    assert [r["ike_sa_id"] for r in rows] == [cluster.ike[2].ike_sa_id]
    rows = as_json(cluster, "client", "redirect", "--all", "--to", "198.51.100.50")
    assert len(rows) == 3
    assert len(cluster.store.list(RedirectRequest).items) == 3
    # what the operator gets wrong: a usage error (2) or a clear failure (1), no traceback
    for argv, code in ((("--to", "198.51.100.50"), 2),
                       (("nothex", "--to", "198.51.100.50"), 2),
                       ((first, "--all", "--to", "198.51.100.50"), 2),
                       (("f" * 32, "--to", "198.51.100.50"), 1),
                       ((first, "--to", "bad gateway!"), 1),
                       (("--identity", "nobody@example.net", "--to", "198.51.100.50"), 1)):
        result = run(*cluster.args("client", "redirect", *argv))
        assert result.exit_code == code, (argv, result.output)
        assert "Traceback" not in result.output
