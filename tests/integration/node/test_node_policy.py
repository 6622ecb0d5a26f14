"""Traffic policy at a real node (etcd, TUN, scapy as the client): what a Child SA's policy
forbids is dropped, counted and never reaches the protected network; what it allows flows;
an operator's change of policy/<name> takes effect without a rekey; a missing or malformed
policy fails closed."""

from __future__ import annotations

import dataclasses
import select
import socket

from node_lab import SERVER, VIRTUAL_IP, Client, NodeLab, socket_in
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw, raw
from tests_node_helpers import wait_until

from cluster.store import Policy

PROBE_PORT = 5300  # a UDP port on the server the guest policy does not open


def _send_udp(client: Client, port: int, payload: bytes) -> None:
    inner = IP(src=VIRTUAL_IP, dst=SERVER) / UDP(sport=40000, dport=port) / Raw(payload)
    wire = raw(client.to_node.encrypt(inner))
    client.sock.sendto(wire[28:], ("203.0.113.10", 4500))


def _received(sock: socket.socket, timeout_s: float) -> list[bytes]:
    got = []
    while True:
        r, _, _ = select.select([sock], [], [], timeout_s)
        if not r:
            return got
        got.append(sock.recv(65535))
        timeout_s = 0.2


def _policy_drops(lab: NodeLab, policy: str, reason: str, direction: str = "in") -> float:
    m = lab.metrics("node-1")
    for name, value in m.items():
        if name.startswith("ipsec_cluster_node_policy_drops_total{") and \
                f'policy="{policy}"' in name and f'reason="{reason}"' in name and \
                f'direction="{direction}"' in name:
            return value
    return 0.0


def _up(lab: NodeLab, record_of: Policy | None, **fields: object) -> Client:
    if record_of is not None:
        lab.store.put(record_of)
    lab.start_node("node-1")
    record = dataclasses.replace(lab.child_sa(), **fields)  # type: ignore[arg-type]
    lab.store.put(record)
    lab.assign("node-1", 1)
    lab.steer("node-1")
    return lab.client(record)


def test_guest_policy_drops_forbidden_and_forwards_allowed(node_lab: NodeLab) -> None:
    lab = node_lab
    # guest: the protected server (10.20.0.10, an internal address) is reachable only for
    # ICMP, as an allowed rule narrower than 10.0.0.0/8 says
    guest = Policy("guest", ["*@guest.example.org"], "guest", [f"{SERVER}/32 icmp"])
    client = _up(lab, guest, policy="guest", policy_mode="guest",
                 policy_allowed=list(guest.allowed))
    assert wait_until(lambda: client.ping(1.0) is not None, 15), lab.log("node-1")
    server = socket_in(lab.ns("srv"))
    server.bind((SERVER, PROBE_PORT))
    try:
        for i in range(5):
            _send_udp(client, PROBE_PORT, b"forbidden %d" % i)
        assert _received(server, 1.0) == []  # never forwarded
        assert wait_until(lambda: _policy_drops(lab, "guest", "internal") >= 5, 10)
        assert client.ping() is not None  # the allowed traffic still flows

        # the operator opens the port: effective on the established SA, no rekey
        lab.store.put(dataclasses.replace(
            guest, allowed=[f"{SERVER}/32 icmp", f"{SERVER}/32 udp/{PROBE_PORT}"]))
        assert wait_until(lambda: (_send_udp(client, PROBE_PORT, b"now allowed"),
                                   _received(server, 0.3))[1], 10)
        # and closes ICMP again: the ping is dropped at the node, counted
        lab.store.put(dataclasses.replace(guest, allowed=[f"{SERVER}/32 udp/{PROBE_PORT}"]))
        assert wait_until(lambda: client.ping(0.5) is None, 10)
        before = _policy_drops(lab, "guest", "internal")
        assert client.ping(1.0) is None
        assert wait_until(lambda: _policy_drops(lab, "guest", "internal") > before, 5)
    finally:
        server.close()


def test_malformed_or_missing_policy_fails_closed(node_lab: NodeLab) -> None:
    lab = node_lab
    split = Policy("staff", [], "split", ["10.20.0.0/24"])
    client = _up(lab, split, policy="staff", policy_mode="split",
                 policy_allowed=list(split.allowed))
    assert wait_until(lambda: client.ping(1.0) is not None, 15), lab.log("node-1")
    # a value no codec reads at policy/staff: the node must not keep the old version
    lab.store.raw_put(lab.keyspace.policy("staff"), b'{"v": 1, "name": "staff", "mode": 7}')
    assert wait_until(lambda: client.ping(0.5) is None, 10), lab.log("node-1")
    assert wait_until(lambda: _policy_drops(lab, "staff", "unresolved") >= 1, 5)
    assert lab.metrics("node-1")["ipsec_cluster_node_policies_failing_closed"] == 1
    # mended: traffic flows again
    lab.store.put(split)
    assert wait_until(lambda: client.ping(1.0) is not None, 10)
    assert lab.metrics("node-1")["ipsec_cluster_node_policies_failing_closed"] == 0
    # removed: fail closed again, not open
    lab.store.delete(Policy, "staff")
    assert wait_until(lambda: client.ping(0.5) is None, 10)
    assert lab.metrics("node-1")["ipsec_cluster_node_policies_failing_closed"] == 1


def test_sa_bound_to_a_policy_keyd_did_not_have_drops_until_it_exists(
        node_lab: NodeLab) -> None:
    lab = node_lab
    client = _up(lab, None, policy="later")
    assert not wait_until(lambda: client.ping(0.5) is not None, 3)
    assert _policy_drops(lab, "later", "unresolved") >= 1
    lab.store.put(Policy("later", [], "full"))
    assert wait_until(lambda: client.ping(1.0) is not None, 10), lab.log("node-1")


def test_sa_without_policy_is_a_full_tunnel(node_lab: NodeLab) -> None:
    lab = node_lab
    lab.store.put(Policy("everyone", ["*"], "split", []))  # bound by keyd, not by the node
    client = _up(lab, None)
    assert wait_until(lambda: client.ping(1.0) is not None, 15), lab.log("node-1")
    assert not any("policy_drops_total{" in k for k in lab.metrics("node-1"))
