"""The hook event deriver: keyspace changes in, events out (no etcd, no clock)."""

from __future__ import annotations

from dataclasses import dataclass

from cluster.hooks.derive import Change, EventDeriver
from cluster.hooks.event import HookEvent


@dataclass(frozen=True)
class Node:
    id: str
    address: str
    state: str = "ready"


@dataclass(frozen=True)
class Ike:
    ike_sa_id: str
    identity: str
    virtual_ip: str | None
    peer_addr: str = "198.51.100.7"
    peer_port: int = 4500


@dataclass(frozen=True)
class Child:
    spi_in: int
    spi_out: int
    ike_sa_id: str
    identity: str = "alice"
    virtual_ip: str | None = "10.99.0.7"
    peer_addr: str = "198.51.100.7"
    peer_port: int = 4500
    replaces: int | None = None
    created_at: float = 0.0


@dataclass(frozen=True)
class Assign:
    ike_sa_id: str
    node: str
    epoch: int


IKE = "a" * 32


def feed(d: EventDeriver, *changes: Change) -> list[HookEvent]:
    out: list[HookEvent] = []
    for c in changes:
        out += d.apply(c)
    return out


def test_node_lifecycle() -> None:
    d = EventDeriver("prod")
    up = feed(d, Change("nodes", "n1", Node("n1", "10.30.0.11"), 5))
    assert [(e.event, e.node, e.node_address, e.revision, e.cluster) for e in up] == [
        ("node-up", "n1", "10.30.0.11", 5, "prod")]
    assert feed(d, Change("nodes", "n1", Node("n1", "10.30.0.11"), 6)) == []  # a refresh
    drain = feed(d, Change("nodes", "n1", Node("n1", "10.30.0.11", "draining"), 7))
    assert [e.event for e in drain] == ["node-draining"]
    assert feed(d, Change("nodes", "n1", Node("n1", "10.30.0.11", "draining"), 8)) == []
    assert feed(d, Change("nodes", "n1", Node("n1", "10.30.0.11", "ready"), 9)) == []
    down = feed(d, Change("nodes", "n1", None, 10))
    assert [(e.event, e.node, e.node_address) for e in down] == [
        ("node-down", "n1", "10.30.0.11")]


def test_node_that_starts_draining() -> None:
    events = feed(EventDeriver(), Change("nodes", "n2", Node("n2", "10.0.0.2", "draining"), 1))
    assert [e.event for e in events] == ["node-up", "node-draining"]


def test_client_up_moved_rekeyed_down() -> None:
    d = EventDeriver()
    feed(d, Change("ike", IKE, Ike(IKE, "alice", "10.99.0.7"), 1),
         Change("sa", "c0000001", Child(0xC0000001, 0xD0000001, IKE), 2))
    (up,) = feed(d, Change("assign", IKE, Assign(IKE, "n1", 1), 3))
    assert (up.event, up.client_id, up.virtual_ip, up.peer, up.node, up.epoch) == (
        "client-up", "alice", "10.99.0.7", "198.51.100.7:4500", "n1", 1)
    assert (up.spi_in, up.spi_out) == (0xC0000001, 0xD0000001)
    assert feed(d, Change("assign", IKE, Assign(IKE, "n1", 1), 4)) == []  # same owner
    (moved,) = feed(d, Change("assign", IKE, Assign(IKE, "n2", 2), 5))
    assert (moved.event, moved.node, moved.old_node, moved.epoch) == ("client-moved", "n2",
                                                                      "n1", 2)
    (rekeyed,) = feed(d, Change("sa", "c0000002",
                                Child(0xC0000002, 0xD0000002, IKE, replaces=0xC0000001), 6))
    assert (rekeyed.event, rekeyed.spi_in, rekeyed.old_spi_in, rekeyed.node) == (
        "sa-rekeyed", 0xC0000002, 0xC0000001, "n2")
    # a rekeyed SA written again is not a second rekey
    assert feed(d, Change("sa", "c0000002",
                          Child(0xC0000002, 0xD0000002, IKE, replaces=0xC0000001), 7)) == []
    (down,) = feed(d, Change("ike", IKE, None, 8))
    assert (down.event, down.client_id, down.node, down.spi_in) == ("client-down", "alice",
                                                                     "n2", 0xC0000002)
    assert feed(d, Change("assign", IKE, None, 9)) == []


def test_new_child_sa_without_replaces_is_no_rekey() -> None:
    d = EventDeriver()
    assert feed(d, Change("sa", "c0000009", Child(0xC0000009, 0xD0000009, IKE), 1)) == []


def test_unknown_ike_sa_going_away_is_still_reported() -> None:
    (down,) = EventDeriver().apply(Change("ike", IKE, None, 4))
    assert (down.event, down.ike_sa_id, down.client_id) == ("client-down", IKE, None)


def test_prime_sets_state_without_events() -> None:
    d = EventDeriver()
    d.prime([Change("nodes", "n1", Node("n1", "10.0.0.1"), 1),
             Change("assign", IKE, Assign(IKE, "n1", 1), 2),
             Change("seq", "c0000001", object(), 3)])          # not a watched kind
    assert d.names("nodes") == {"n1"} and d.names("assign") == {IKE}
    assert d.names("seq") == set()
    (moved,) = d.apply(Change("assign", IKE, Assign(IKE, "n3", 2), 4))
    assert (moved.event, moved.old_node) == ("client-moved", "n1")


def test_other_kinds_are_ignored() -> None:
    assert EventDeriver().apply(Change("pool", "10.99.0.1", object(), 1)) == []


IKE2 = "b" * 32


def test_ike_sa_rekey_is_neither_up_nor_down() -> None:
    """keyd's order on an IKE SA rekey: new ike/ (+ re-parented Child SA), new assign/ on
    the same node, then the old ike/ and assign/ deleted."""
    d = EventDeriver()
    feed(d, Change("ike", IKE, Ike(IKE, "alice", "10.99.0.7"), 1),
         Change("sa", "c0000001", Child(0xC0000001, 0xD0000001, IKE), 2),
         Change("assign", IKE, Assign(IKE, "n1", 1), 3))
    events = feed(d, Change("ike", IKE2, Ike(IKE2, "alice", "10.99.0.7"), 4),
                  Change("sa", "c0000001", Child(0xC0000001, 0xD0000001, IKE2), 4),
                  Change("assign", IKE2, Assign(IKE2, "n1", 1), 5),
                  Change("ike", IKE, None, 6), Change("assign", IKE, None, 6))
    assert events == []
    (down,) = feed(d, Change("ike", IKE2, None, 7))   # the client really leaves later
    assert (down.event, down.client_id, down.ike_sa_id, down.spi_in) == (
        "client-down", "alice", IKE2, 0xC0000001)


def test_ike_sa_rekey_onto_another_node_is_a_move() -> None:
    d = EventDeriver()
    feed(d, Change("ike", IKE, Ike(IKE, "alice", None), 1),
         Change("assign", IKE, Assign(IKE, "n1", 1), 2),
         Change("ike", IKE2, Ike(IKE2, "alice", None), 3))
    (moved,) = feed(d, Change("assign", IKE2, Assign(IKE2, "n2", 1), 4))
    assert (moved.event, moved.node, moved.old_node) == ("client-moved", "n2", "n1")
    assert feed(d, Change("ike", IKE, None, 5)) == []


def test_two_clients_with_one_identity_are_two_clients() -> None:
    d = EventDeriver()
    feed(d, Change("ike", IKE, Ike(IKE, "alice", "10.99.0.7"), 1),
         Change("assign", IKE, Assign(IKE, "n1", 1), 2),
         Change("ike", IKE2, Ike(IKE2, "alice", "10.99.0.8"), 3))
    (up,) = feed(d, Change("assign", IKE2, Assign(IKE2, "n1", 1), 4))
    assert (up.event, up.virtual_ip) == ("client-up", "10.99.0.8")
    (down,) = feed(d, Change("ike", IKE, None, 5))
    assert (down.event, down.virtual_ip) == ("client-down", "10.99.0.7")
