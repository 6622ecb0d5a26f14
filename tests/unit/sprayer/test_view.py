"""The cluster view: watch events in, planner inputs and driver targets out."""

from __future__ import annotations

import dataclasses
import time

from cluster.store.records import Assignment, ChildSaRecord, NodeRecord, SeqRecord
from cluster.store.watch import RecordDeleted, RecordPut, WatchResynced
from sprayer.view import ClusterView

IKE = "0000000000000001" + "0000000000000002"


def put(view: ClusterView, kind: str, record: object, rev: int = 1) -> None:
    view.apply(kind, RecordPut("k", "n", record, rev))  # type: ignore[arg-type]


def child(spi: int, vip: str | None = "10.99.0.1") -> ChildSaRecord:
    return ChildSaRecord(spi, spi + 1, IKE, "aes128gcm16", None, False, b"k", b"", b"k", b"",
                         [], [], "198.51.100.2", 4500, True, vip, "c", time.time(), 1, 2)


def node(nid: str, state: str = "ready") -> NodeRecord:
    return NodeRecord(nid, "10.30.0.1" if nid == "n1" else "10.30.0.2", 10, state,  # type: ignore[arg-type]
                      4501, "t", 0.0)


def test_ready_only_after_every_initial_read() -> None:
    v = ClusterView()
    for kind in ("nodes", "keyd", "assign", "sa"):
        v.apply(kind, WatchResynced(1, "initial", frozenset()))
    assert not v.ready
    v.apply("seq", WatchResynced(1, "initial", frozenset()))
    assert v.ready


def test_targets_follow_the_previous_owner_until_the_flip() -> None:
    v = ClusterView()
    put(v, "nodes", node("n1"))
    put(v, "nodes", node("n2"))
    put(v, "sa", child(0x1000))
    put(v, "sa", child(0x2000, vip=None))
    assert v.new_clients() == {IKE}
    put(v, "assign", Assignment(IKE, "n1", 1, "active", None, 0.0), 5)
    assert v.new_clients() == set()
    t = v.targets(lambda n: True)
    assert t.spis == {0x1000: "n1", 0x2000: "n1"} and t.clients == {"10.99.0.1": "n1"}
    assert t.fallback == ["n1", "n2"]

    put(v, "assign", Assignment(IKE, "n2", 2, "handoff", "n1", 0.0), 6)
    assert v.targets(lambda n: True).spis == {0x1000: "n1", 0x2000: "n1"}
    assert v.handoffs_with_finals() == set()
    put(v, "seq", SeqRecord(0x1000, "n1", 2, 10, 9, 0, "final", 0.0))
    assert v.handoffs_with_finals() == set()          # one Child SA still missing
    put(v, "seq", SeqRecord(0x2000, "n1", 1, 10, 9, 0, "final", 0.0))
    assert v.handoffs_with_finals() == set()          # final of an older epoch: not this one
    put(v, "seq", SeqRecord(0x2000, "n1", 2, 10, 9, 0, "final", 0.0))
    # the new owner checkpoints at once: that must not hide the final it started from
    put(v, "seq", SeqRecord(0x2000, "n2", 2, 11, 9, 0, "checkpoint", 0.0))
    assert v.handoffs_with_finals() == {IKE}
    # every exact final is in: traffic flips to the new owner before `active` is written
    assert v.targets(lambda n: True).spis == {0x1000: "n2", 0x2000: "n2"}

    put(v, "assign", Assignment(IKE, "n2", 2, "active", "n1", 0.0), 7)
    assert v.targets(lambda n: True).spis == {0x1000: "n2", 0x2000: "n2"}
    assert v.in_handoff == set()


def test_checkpoints_do_not_churn_and_dead_nodes_leave_the_fallback() -> None:
    v = ClusterView()
    gone: list[str] = []
    v.on_node_gone = gone.append
    put(v, "nodes", node("n1"))
    put(v, "nodes", node("n2", "draining"))
    g = v.generation
    put(v, "seq", SeqRecord(0x1000, "n1", 1, 10, 9, 0, "checkpoint", 0.0))
    assert v.generation == g
    assert v.targets(lambda n: n != "n1").fallback == []   # n1 dead, n2 draining
    v.apply("nodes", RecordDeleted("k", "n1", 9))
    assert gone == ["n1"] and "n1" not in v.nodes
    v.apply("sa", RecordDeleted("k", "not-hex", 9))          # junk names are ignored


def test_non_ipv4_nodes_and_clients_are_left_out_not_fatal() -> None:
    v = ClusterView()
    put(v, "nodes", NodeRecord("n6", "2001:db8::1", 10, "ready", 4501, "t", 0.0))
    put(v, "nodes", node("n1"))
    put(v, "sa", child(0x1000, vip="fd00::7"))
    put(v, "assign", Assignment(IKE, "n1", 1, "active", None, 0.0), 5)
    t = v.targets(lambda n: True)
    assert t.nodes == {"n1": "10.30.0.1"} and t.fallback == ["n1"]
    assert t.spis == {0x1000: "n1"} and t.clients == {}


def test_child_sa_index_follows_ike_rekey_and_delete() -> None:
    v = ClusterView()
    put(v, "sa", child(0x1000))
    other = "0000000000000003" + "0000000000000004"
    # an IKE SA rekey moves the Child SA to the new IKE SA id (RFC 7296 §2.18)
    put(v, "sa", dataclasses.replace(child(0x1000), ike_sa_id=other))
    assert v.by_ike == {other: {0x1000}} and v.new_clients() == {other}
    v.apply("sa", RecordDeleted("k", "00001000", 9))
    assert v.by_ike == {} and v.new_clients() == set()


def test_ipv6_virtual_address_is_routed_to_the_owner_ipv6_back_end() -> None:
    v = ClusterView()
    put(v, "nodes", dataclasses.replace(node("n1"), address6="fd00:30::11"))
    put(v, "nodes", node("n2"))      # no IPv6 back-end address
    put(v, "sa", dataclasses.replace(child(0x1000), virtual_ip6="fd00:99::1"))
    put(v, "assign", Assignment(IKE, "n1", 1, "active", None, 0.0), 5)
    t = v.targets(lambda n: True)
    assert t.clients == {"10.99.0.1": "n1", "fd00:99::1": "n1"}
    assert t.client_routes() == {"10.99.0.1": "10.30.0.1", "fd00:99::1": "fd00:30::11"}
    # an owner without an IPv6 back-end address gets the client's IPv4 route only
    put(v, "assign", Assignment(IKE, "n2", 2, "active", "n1", 0.0), 6)
    assert v.targets(lambda n: True).client_routes() == {"10.99.0.1": "10.30.0.2"}
