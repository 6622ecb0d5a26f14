"""keyd's lease index: a claim looks leases up by address, IKE SA and identity without
scanning them all; every put and removal keeps the three lookups in step."""

from __future__ import annotations

from cluster.store.records import PoolLease
from keyd.view import ClusterView, HeldLease, LeaseIndex


def held(ip: str, ike_sa_id: str, identity: str, revision: int = 1) -> HeldLease:
    return HeldLease(PoolLease(ip=ip, ike_sa_id=ike_sa_id, identity=identity, keyd_id="k1",
                               leased_at=1.0), revision)


def test_lookups_follow_puts_and_removals() -> None:
    a, b = held("10.99.0.1", "a" * 32, "alice"), held("10.99.0.2", "b" * 32, "alice")
    index = LeaseIndex([a, b])
    assert index.get("10.99.0.1") == a and index.get("10.99.0.3") is None
    assert index.of_ike_sa("b" * 32) == b
    assert index.of_identity("alice") == [a, b] and index.of_identity("bob") == []
    # the same address leased anew to another IKE SA and identity: the old entries go
    c = held("10.99.0.1", "c" * 32, "bob", revision=2)
    index.put("10.99.0.1", c)
    assert index.of_ike_sa("a" * 32) is None and index.of_ike_sa("c" * 32) == c
    assert index.of_identity("alice") == [b] and index.of_identity("bob") == [c]
    assert index.pop("10.99.0.2") == b and index.pop("10.99.0.2") is None
    assert index.of_identity("alice") == [] and index.ips() == ["10.99.0.1"]


def test_view_notes_own_writes_in_the_index() -> None:
    view = ClusterView()
    lease = held("10.99.0.7", "d" * 32, "carol").record
    view.note_lease(lease, lease.ip, 5)
    assert view.of_ike_sa("d" * 32) == HeldLease(lease, 5)
    assert view.of_identity("carol") == [HeldLease(lease, 5)]
    view.note_lease(None, lease.ip)
    assert view.get(lease.ip) is None and view.of_identity("carol") == []
    assert view.leases() == {}


def test_an_ike_sa_holds_one_lease_of_each_family() -> None:
    v4, v6 = held("10.99.0.1", "e" * 32, "dave"), held("fd00:99::1", "e" * 32, "dave")
    index = LeaseIndex([v6, v4])
    assert index.of_ike_sa("e" * 32) == v4 and index.of_ike_sa("e" * 32, 4) == v4
    assert index.of_ike_sa("e" * 32, 6) == v6
    index.pop("fd00:99::1")
    assert index.of_ike_sa("e" * 32, 6) is None and index.of_ike_sa("e" * 32) == v4
