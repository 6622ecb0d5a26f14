"""Node agents with a real etcd and scapy as the client: forwarding, hand-off, fencing,
restart, etcd outage, health probes, NAT rebinding, on-demand SA reads, IKE relay."""

from __future__ import annotations

import os
import random
import socket
import time

from node_lab import CLIENT, NODE_IPS, SERVER, SPI_IN, VIP, VIRTUAL_IP, Client, NodeLab, socket_in
from scapy.layers.inet import ICMP, IP, UDP
from scapy.packet import raw
from tests_node_helpers import wait_until

from cluster.lab import netns
from cluster.node.sas import FETCH_BURST, FETCH_RATE
from cluster.store import ChildSaRecord, NodeRecord

JUMP = 1024 * 16  # jump_for(checkpoint_packets=16), the lab config of these tests


def up(lab: NodeLab, *nodes: str, owner: str = "node-1",
       **sa: object) -> tuple[ChildSaRecord, Client]:
    for n in nodes:
        lab.start_node(n)
    record = lab.child_sa(**sa)  # type: ignore[arg-type]
    lab.store.put(record)
    lab.assign(owner, 1)
    lab.steer(owner)
    client = lab.client(record)
    assert wait_until(lambda: client.ping(1.0) is not None, 15), lab.log(owner)
    return record, client


def ping_until(client: Client, timeout_s: float) -> tuple[int, bytes]:
    """The first echo that comes back within timeout_s (each try waits 1 s)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = client.ping(1.0)
        if got is not None:
            return got
    raise AssertionError(f"no echo through the tunnel within {timeout_s} s")


def pings(client: Client, n: int) -> int:
    """n echoes through the tunnel, each of which must come back; the last one's number."""
    last = 0
    for _ in range(n):
        got = client.ping()
        assert got is not None
        last = got[0]
    return last


def test_ping_through_one_node(node_lab: NodeLab) -> None:
    lab = node_lab
    _, client = up(lab, "node-1")
    got = client.ping()
    assert got is not None
    reply = IP(got[1])
    assert reply.src == SERVER and reply.dst == VIRTUAL_IP and reply[ICMP].type == 0
    m = lab.metrics("node-1")
    assert m["ipsec_cluster_node_sas_installed"] == 1
    assert m["ipsec_cluster_node_sas_owned"] == 1
    assert m['ipsec_cluster_node_packets_total{direction="in"}'] >= 2
    assert m['ipsec_cluster_node_packets_total{direction="out"}'] >= 2
    # checkpoints reach seq/ (T = 100 ms)
    assert wait_until(lambda: (s := lab.seq()) is not None and s.out_seq >= JUMP + 2, 5)


def test_every_suite_forwards(node_lab: NodeLab) -> None:
    lab = node_lab
    lab.start_node("node-1")
    lab.assign("node-1", 1)
    lab.steer("node-1")
    for encr, integ in (("aes256gcm16", None), ("chacha20poly1305", None),
                        ("aes128", "sha256"), ("aes256", "sha512")):
        record = lab.child_sa(encr, integ, esn=False)
        lab.store.put(record)
        client = lab.client(record)
        try:
            ping_until(client, 10)
        finally:
            client.sock.close()


def test_planned_handoff_installs_exact_counters(node_lab: NodeLab) -> None:
    lab = node_lab
    _, client = up(lab, "node-1", "node-2")
    last = pings(client, 5)
    lab.assign("node-2", 2, "handoff", "node-1")
    assert wait_until(lambda: (s := lab.seq()) is not None and s.kind == "final", 5)
    final = lab.seq()
    assert final is not None
    assert (final.owner, final.epoch, final.out_seq) == ("node-1", 2, last)
    lab.steer("node-2")
    lab.assign("node-2", 2, "active", "node-1")
    got = ping_until(client, 10)
    assert got[0] == last + 1  # no jump: the sequence continues exactly, no rekey
    m = lab.metrics("node-2")
    assert m['ipsec_cluster_node_takeovers_total{how="exact"}'] == 1
    assert lab.metrics("node-1")["ipsec_cluster_node_sas_owned"] == 0


def test_newer_epoch_fences_the_old_owner(node_lab: NodeLab) -> None:
    lab = node_lab
    _, client = up(lab, "node-1", "node-2")
    got = client.ping()
    assert got is not None
    before = got[0]
    lab.assign("node-2", 2)  # unplanned: a failover with a newer epoch
    time.sleep(1.0)  # fencing within 1 s
    # traffic still steered to node-1: it decrypts, but must not send any more
    assert client.ping(2.0) is None
    m = lab.metrics("node-1")
    assert m["ipsec_cluster_node_sas_owned"] == 0
    lab.steer("node-2")
    esp_seq = ping_until(client, 10)[0]
    assert esp_seq > before + JUMP - 16  # started at checkpoint + jump: no sequence reuse
    assert lab.metrics("node-2")['ipsec_cluster_node_takeovers_total{how="jump"}'] == 1


def test_sigkill_and_restart_has_every_sa_back_within_5s(node_lab: NodeLab) -> None:
    lab = node_lab
    _, client = up(lab, "node-1")
    got = client.ping()
    assert got is not None
    lab.kill_node("node-1")
    t0 = time.monotonic()
    lab.start_node("node-1")
    assert wait_until(
        lambda: lab.metrics("node-1").get("ipsec_cluster_node_sas_installed") == 1, 5)
    assert time.monotonic() - t0 < 5.0
    again = ping_until(client, 10)
    assert again[0] > got[0]  # restarted above what the killed incarnation could have sent


def test_etcd_outage_does_not_stop_forwarding(node_lab: NodeLab) -> None:
    lab = node_lab
    _, client = up(lab, "node-1")
    lab.forwarder.pause()
    try:
        lost = 0
        t_end = time.monotonic() + 10  # > lease TTL (3 s): the lease goes unconfirmed
        sent = 0
        while time.monotonic() < t_end:
            sent += 1
            if client.ping(1.0) is None:
                lost += 1
            time.sleep(0.3)
        assert lost == 0, f"{lost} of {sent} pings lost during the outage"
        assert lab.metrics("node-1")["ipsec_cluster_node_lease_ok"] == 0
    finally:
        lab.forwarder.resume()
    assert wait_until(lambda: lab.metrics("node-1")["ipsec_cluster_node_lease_ok"] == 1, 15)
    assert client.ping() is not None
    # etcd deleted the record when the lease expired: that is no removal, the node is back
    assert not wait_until(lambda: lab.metrics("node-1")["ipsec_cluster_node_removed"] != 0, 2)
    assert lab.store.get(NodeRecord, "node-1") is not None
    written = lab.metrics("node-1")["ipsec_cluster_node_checkpoints_written_total"]
    assert wait_until(lambda: (s := lab.seq()) is not None and s.out_seq > JUMP + 20, 5), written


def _probe(sock: socket.socket, node: str) -> bytes | None:
    """A health probe's answer past the nonce (state byte + node id), None if unanswered."""
    nonce = os.urandom(8)
    sock.sendto(b"IPSC-PROBE" + nonce, (NODE_IPS[node], 4501))
    try:
        data, _ = sock.recvfrom(512)
    except TimeoutError:
        return None
    assert data[:18] == b"IPSC-ALIVE" + nonce
    return data[18:]


def test_health_probe_and_draining(node_lab: NodeLab) -> None:
    lab = node_lab
    lab.start_node("node-1")
    sock = socket_in(lab.ns("cli"))
    sock.settimeout(0.5)

    def probe() -> bytes | None:
        return _probe(sock, "node-1")

    assert wait_until(lambda: probe() == b"Rnode-1", 5)
    v = lab.store.get(NodeRecord, "node-1")
    assert v is not None
    from dataclasses import replace
    lab.store.update_if(replace(v.record, state="draining"), v.mod_revision,
                        lease=v.lease_id)
    assert wait_until(lambda: probe() == b"Dnode-1", 5)
    sock.sendto(b"not a probe", (NODE_IPS["node-1"], 4501))  # ignored, no crash
    assert probe() == b"Dnode-1"
    sock.close()


def test_rebinding_follows_authenticated_packets_only(node_lab: NodeLab) -> None:
    lab = node_lab
    _, client = up(lab, "node-1")
    # a forged packet with the SA's SPI from another port must not move the SA
    other = socket_in(lab.ns("cli"))
    other.bind((CLIENT, 4700))
    other.sendto(SPI_IN.to_bytes(4) + b"\x00\x00\x00\x09" + os.urandom(60), (VIP, 4500))
    time.sleep(0.3)
    assert client.ping() is not None  # replies still go to port 4500
    # the client's NAT mapping changes: its authenticated packets now come from port 4600
    moved = socket_in(lab.ns("cli"))
    moved.bind((CLIENT, 4600))
    client.sock.close()
    client.sock = moved
    assert client.ping() is not None  # the reply followed to the new port
    assert lab.metrics("node-1")["ipsec_cluster_node_rebinds_total"] == 1
    assert lab.metrics("node-1")['ipsec_cluster_node_drops_total{reason="integrity"}'] == 1
    other.close()


def test_spoofed_inner_source_dropped(node_lab: NodeLab) -> None:
    lab = node_lab
    _, client = up(lab, "node-1")
    inner = IP(src="10.99.0.8", dst=SERVER) / ICMP()
    client.sock.sendto(raw(client.to_node.encrypt(inner))[28:], (VIP, 4500))
    assert wait_until(lambda: lab.metrics("node-1")[
        'ipsec_cluster_node_drops_total{reason="selector"}'] == 1, 5)


def test_unknown_spi_is_read_once_and_counted(node_lab: NodeLab) -> None:
    lab = node_lab
    _, client = up(lab, "node-1")
    unknown = 'ipsec_cluster_node_drops_total{reason="unknown_spi"}'
    fetches = "ipsec_cluster_node_sa_fetches_total"
    before = lab.metrics("node-1")
    for _ in range(3):
        client.sock.sendto(b"\x0b\xad\x0b\xad\x00\x00\x00\x01" + os.urandom(60), (VIP, 4500))
    assert wait_until(lambda: lab.metrics("node-1")[unknown] == before[unknown] + 3, 5)
    assert lab.metrics("node-1")[fetches] == before[fetches] + 1  # read once, counted
    # an SA that etcd has but this node has not seen is installed by that one read
    assert client.ping() is not None


def test_made_up_spis_are_shed_not_read_from_etcd(node_lab: NodeLab) -> None:
    """A flood of random SPIs (the soak's ESP flood) costs etcd at most the on-demand read
    rate: every other SPI is counted as shed, and the client keeps being answered."""
    lab = node_lab
    _, client = up(lab, "node-1")
    unknown = 'ipsec_cluster_node_drops_total{reason="unknown_spi"}'
    fetches = "ipsec_cluster_node_sa_fetches_total"
    shed = "ipsec_cluster_node_sa_fetches_shed_total"
    before = lab.metrics("node-1")
    flood = socket_in(lab.ns("cli"))
    flood.bind((CLIENT, 4800))
    spis = random.Random(15).sample(range(1, 1 << 32), 3000)
    t0 = time.monotonic()
    for i, spi in enumerate(spis):
        flood.sendto(spi.to_bytes(4) + i.to_bytes(4) + os.urandom(72), (VIP, 4500))
        if i % 500 == 499:
            assert client.ping() is not None  # answered through the flood
            time.sleep(0.05)  # the node's socket buffer keeps up: every datagram arrives
    assert wait_until(lambda: lab.metrics("node-1")[unknown] >= before[unknown] + 3000, 15)
    elapsed = time.monotonic() - t0
    after = lab.metrics("node-1")
    read = after[fetches] - before[fetches]
    # the gate's burst plus its rate over the flood (and a second of slack): not 3000
    assert read <= FETCH_BURST + FETCH_RATE * (elapsed + 1.0), (read, elapsed)
    assert read + after[shed] - before[shed] == 3000  # each one read or counted as shed
    assert client.ping() is not None
    flood.close()


def test_stray_ike_is_relayed_to_keyd_unchanged(node_lab: NodeLab) -> None:
    lab = node_lab
    lab.start_node("node-1")
    lab.steer("node-1")
    hub = lab.ns("hub")
    netns.address(hub, "lo", f"{VIP}/32")  # keyd's side: the VIP is local there
    keyd = socket_in(hub)
    keyd.bind((VIP, 500))
    keyd.settimeout(5)
    keyd_natt = socket_in(hub)
    keyd_natt.bind((VIP, 4500))
    keyd_natt.settimeout(5)
    ike = os.urandom(8) + bytes(8) + b"\x21\x20\x22\x08" + bytes(4) + (36).to_bytes(4) + bytes(8)
    sender = socket_in(lab.ns("cli"))
    sender.bind((CLIENT, 5555))
    sender.sendto(ike, (VIP, 500))
    data, src = keyd.recvfrom(2048)
    assert data == ike and src == (CLIENT, 5555)  # the client's own address and port
    sender.sendto(b"\x00\x00\x00\x00" + ike, (VIP, 4500))  # IKE behind the non-ESP marker
    data, src = keyd_natt.recvfrom(2048)
    assert data == b"\x00\x00\x00\x00" + ike and src == (CLIENT, 5555)
    assert lab.metrics("node-1")["ipsec_cluster_node_ike_relayed_total"] == 2
    for s in (keyd, keyd_natt, sender):
        s.close()


def test_junk_in_etcd_loses_nothing_established(node_lab: NodeLab) -> None:
    lab = node_lab
    record, client = up(lab, "node-1")
    ks = lab.keyspace
    lab.store.raw_put(ks.sa(0x0BAD0001), b"{not json")  # skipped by the watch, counted
    lab.store.raw_put(ks.sa(0x0BAD0002), b'{"v": 99}')  # a codec version we do not read
    from dataclasses import replace
    # decodes, but the ESP core cannot run it (a 5-byte AES-GCM key): refused, old SA kept
    lab.store.put(replace(record, enc_key_in=b"short"))
    lab.store.raw_put(ks.assign("f" * 32), b"[]")
    assert wait_until(lambda: "cannot install SA c0de0001" in lab.log("node-1"), 10)
    for _ in range(3):
        assert client.ping() is not None
    assert "Traceback" not in lab.log("node-1")


def test_unreachable_etcd_at_start_is_one_line_and_exit_1(node_lab: NodeLab) -> None:
    import subprocess
    import sys
    from pathlib import Path
    lab = node_lab
    cfg = lab.config("node-1").read_text().replace("10.30.0.2:2379", "10.30.0.2:2")
    path = lab.tmp / "unreachable.toml"
    path.write_text(cfg)
    r = subprocess.run(["ip", "netns", "exec", lab.ns("n1"),
                        str(Path(sys.executable).parent / "cluster-node"), "--config",
                        str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    lines = [x for x in r.stderr.splitlines() if x.startswith("cluster-node:")]
    assert len(lines) == 1 and "etcd" in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_partitioned_owner_stops_sending_once_the_client_moves(node_lab: NodeLab) -> None:
    """node-1 loses etcd (not the others): its lease goes unconfirmed, node-2 takes over at a
    newer epoch and the client's ESP is steered there, while a stale route still brings the
    client's return traffic to node-1. node-1 must not send it; when it reaches etcd again
    it sees the newer epoch and stays fenced."""
    lab = node_lab
    _, client = up(lab, "node-1", "node-2")
    before = client.ping()
    assert before is not None
    n1 = lab.ns("n1")
    rules = ("table inet partition {\n chain out {\n  type filter hook output priority 0;\n"
             "  tcp dport 2379 drop\n }\n chain in {\n  type filter hook input priority 0;\n"
             "  tcp sport 2379 drop\n }\n}\n")
    netns.run(["ip", "netns", "exec", n1, "nft", "-f", "-"], input_text=rules)
    try:
        assert wait_until(lambda: lab.metrics("node-1").get(
            "ipsec_cluster_node_lease_ok") == 0, 15)
        assert client.ping() is not None  # still forwarding: the client is heard from
        lab.assign("node-2", 2)  # the sprayer's failover (etcd itself is up)
        netns.route(lab.ns("cli"), f"{VIP}/32", "via", NODE_IPS["node-2"])  # ESP moves
        time.sleep(1.5)  # > fence_grace_ms since node-1 last heard from the client
        sent = lab.metrics("node-1")['ipsec_cluster_node_packets_total{direction="out"}']
        for _ in range(5):
            client.ping(0.5)  # replies still routed to node-1 (stale /32 route)
        m = lab.metrics("node-1")
        assert m['ipsec_cluster_node_packets_total{direction="out"}'] == sent
        assert m['ipsec_cluster_node_drops_total{reason="not_owner"}'] >= 5
        netns.route(lab.ns("srv"), f"{VIRTUAL_IP}/32", "via", NODE_IPS["node-2"])
        after = ping_until(client, 10)
        assert after[0] > before[0] + JUMP - 16
    finally:
        netns.in_ns(n1, ["nft", "delete", "table", "inet", "partition"], check=False)
    assert wait_until(lambda: lab.metrics("node-1").get("ipsec_cluster_node_lease_ok") == 1,
                      30)
    assert lab.metrics("node-1")["ipsec_cluster_node_sas_owned"] == 0


def test_ike_rekey_moves_child_sa_to_the_new_ike_sa(node_lab: NodeLab) -> None:
    """keyd's IKE SA rekey: the Child SA record names the new IKE SA id, the assignment is
    copied to that id and the old one removed. The node takes the SA over under the new id
    (with the jump: ownership is per IKE SA) and keeps carrying the client."""
    from dataclasses import replace

    from node_lab import IKE_SA_ID

    from cluster.store import Assignment
    lab = node_lab
    record, client = up(lab, "node-1")
    before = client.ping()
    assert before is not None
    new_id = "1" * 16 + "2" * 16
    lab.store.put(replace(record, ike_sa_id=new_id))
    lab.store.put(Assignment(new_id, "node-1", 1, "active", None, time.time()))
    lab.store.delete(Assignment, IKE_SA_ID)
    jump = 'ipsec_cluster_node_takeovers_total{how="jump"}'
    assert wait_until(lambda: lab.metrics("node-1").get(jump) == 2, 10)
    after = ping_until(client, 10)
    assert after[0] > before[0] + JUMP - 16
    for _ in range(3):
        assert client.ping() is not None
    assert lab.metrics("node-1")["ipsec_cluster_node_sas_owned"] == 1
    assert wait_until(lambda: (s := lab.seq()) is not None and s.out_seq >= after[0], 5)


def test_coalesced_datagrams_are_split_and_each_checked(node_lab: NodeLab) -> None:
    """Several ESP datagrams in one UDP GSO send reach the node's socket as one buffer (UDP
    GRO): each is opened on its own, a bad one among them is dropped alone, and the last,
    shorter one is read to its own end."""
    lab = node_lab
    _, client = up(lab, "node-1")
    before = lab.metrics("node-1")
    segments, seqs = [], []
    for i in range(6):
        client.icmp_seq += 1
        seqs.append(client.icmp_seq)
        payload = b"x" * 200 if i < 5 else b"y" * 40  # the last segment is shorter
        inner = IP(src=VIRTUAL_IP, dst=SERVER) / ICMP(id=0x4242, seq=client.icmp_seq) / payload
        segments.append(bytearray(raw(client.to_node.encrypt(inner))[28:]))
    segments[2][-1] ^= 0x01  # its ICV fails
    size = len(segments[0])
    assert all(len(s) == size for s in segments[:5]) and len(segments[5]) < size
    client.sock.sendmsg([b"".join(segments)],
                        [(17, 103, size.to_bytes(2, "little"))],  # SOL_UDP, UDP_SEGMENT
                        0, (VIP, 4500))
    answered: set[int] = set()
    deadline = time.monotonic() + 10
    while len(answered) < 5 and time.monotonic() < deadline:
        got = client.receive(1.0)
        if got is not None and IP(got[1]).haslayer(ICMP) and IP(got[1])[ICMP].type == 0:
            answered.add(IP(got[1])[ICMP].seq)
    assert answered == set(seqs) - {seqs[2]}
    after = lab.metrics("node-1")
    integrity = 'ipsec_cluster_node_drops_total{reason="integrity"}'
    assert after[integrity] == before[integrity] + 1
    coalesced = "ipsec_cluster_node_udp_coalesced_total"
    assert after[coalesced] >= before[coalesced] + 6  # one buffer, split by the node


def test_a_burst_to_one_client_goes_out_complete_and_in_order(node_lab: NodeLab) -> None:
    """Server → client datagrams read off the TUN in one go leave as ESP to the client in
    order, with consecutive sequence numbers (several per sendmsg with UDP GSO, the last of a
    batch possibly shorter)."""
    lab = node_lab
    _, client = up(lab, "node-1")
    server = socket_in(lab.ns("srv"))
    try:
        server.bind((SERVER, 7777))
        sizes = [900] * 30 + [120] + [900] * 9  # a shorter one in the middle
        for i, n in enumerate(sizes):
            server.sendto(i.to_bytes(2) + bytes(n - 2), (VIRTUAL_IP, 7777))
    finally:
        server.close()
    got: list[tuple[int, int, int]] = []  # (ESP seq, datagram number, its length)
    deadline = time.monotonic() + 10
    while len(got) < len(sizes) and time.monotonic() < deadline:
        r = client.receive(1.0)
        if r is None:
            continue
        pkt = IP(r[1])
        if pkt.haslayer(UDP) and pkt[UDP].dport == 7777:
            data = bytes(pkt[UDP].payload)
            got.append((r[0], int.from_bytes(data[:2]), len(data)))
    assert [(n, size) for _, n, size in got] == list(enumerate(sizes))
    seqs = [s for s, _, _ in got]
    assert seqs == list(range(seqs[0], seqs[0] + len(sizes)))


def test_a_wrong_data_key_is_refused_at_start(node_lab: NodeLab) -> None:
    """A node with another data key would skip every SA (no client's ESP carried): it refuses
    to start, naming its key file."""
    import subprocess
    import sys
    from pathlib import Path

    from cluster.store import write_data_key
    lab = node_lab
    up(lab, "node-1")                        # an SA sealed under the cluster's key is stored
    other = lab.tmp / "other.key"
    write_data_key(other)
    path = lab.tmp / "wrong-key.toml"
    path.write_text(lab.config("node-2").read_text().replace(str(lab.data_key_file),
                                                             str(other)))
    r = subprocess.run(["ip", "netns", "exec", lab.ns("n2"),
                        str(Path(sys.executable).parent / "cluster-node"), "--config",
                        str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert str(other) in r.stderr and "opens none" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_removed_node_stays_out_until_restarted(node_lab: NodeLab) -> None:
    """`clusterctl node remove` on a live node: it stays out and says so — no health answers
    (the sprayer sees it down and gives it nothing), no new registration however long it
    runs, `removed` in its metrics — until it is restarted."""
    lab = node_lab
    lab.start_node("node-1")
    sock = socket_in(lab.ns("cli"))
    sock.settimeout(0.5)
    assert wait_until(lambda: _probe(sock, "node-1") == b"Rnode-1", 5)
    assert lab.metrics("node-1")["ipsec_cluster_node_removed"] == 0
    assert lab.store.delete(NodeRecord, "node-1")
    assert wait_until(lambda: lab.metrics("node-1").get("ipsec_cluster_node_removed") == 1, 15)
    assert "out of the cluster until cluster-node is restarted" in lab.log("node-1")
    assert _probe(sock, "node-1") is None
    time.sleep(4.0)  # longer than the lease TTL (3 s): still no record, still silent
    assert lab.store.get(NodeRecord, "node-1") is None
    assert _probe(sock, "node-1") is None
    assert lab.metrics("node-1")["ipsec_cluster_node_lease_ok"] == 1
    lab.stop_node("node-1")
    lab.start_node("node-1")  # registers afresh
    assert wait_until(lambda: _probe(sock, "node-1") == b"Rnode-1", 5)
    assert lab.metrics("node-1")["ipsec_cluster_node_removed"] == 0
    sock.close()
    assert "Traceback" not in lab.log("node-1")
