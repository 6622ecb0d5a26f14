"""The virtual-IP pool against a real etcd: leases are unique across instances, released only
by their IKE SA, and a returning identity gets its previous address back when it is free."""

from __future__ import annotations

import ipaddress
import time

import pytest

from cluster.store.client import Store
from cluster.store.records import IkeSaRecord, PoolLease
from keyd.pool import AddressPool, PoolExhausted


def ike_id(n: int) -> str:
    return f"{n:016x}{n + 1:016x}"


def ike_record(n: int, identity: str) -> IkeSaRecord:
    return IkeSaRecord(ike_sa_id=ike_id(n), spi_i=n, spi_r=n + 1, peer_addr="192.0.2.7",
                       peer_port=500, local_port=500, identity=identity, virtual_ip=None,
                       child_spis=[], keyd_id="keyd-1", updated_at=time.time(), state=b"x")


def test_two_instances_never_lease_one_address_twice(store: Store) -> None:
    a = AddressPool(store, "10.99.0.0/29", "keyd-a")
    b = AddressPool(store, "10.99.0.0/29", "keyd-b")
    got = [(a if i % 2 else b).allocate(ike_id(i * 2 + 2), f"client-{i}") for i in range(6)]
    assert len(set(got)) == 6
    assert all(ipaddress.IPv4Address(ip) in ipaddress.IPv4Network("10.99.0.0/29") for ip in got)
    assert "10.99.0.0" not in got and "10.99.0.7" not in got
    with pytest.raises(PoolExhausted):
        a.allocate(ike_id(100), "client-x")
    stored = {v.record.ip: v.record for v in store.list(PoolLease).items}
    assert set(stored) == set(got)
    assert {r.keyd_id for r in stored.values()} == {"keyd-a", "keyd-b"}


def test_allocate_is_idempotent_per_ike_sa(store: Store) -> None:
    pool = AddressPool(store, "10.99.0.0/24", "keyd-1")
    first = pool.allocate(ike_id(2), "alice")
    assert pool.allocate(ike_id(2), "alice") == first
    assert len(store.list(PoolLease).items) == 1


def test_release_only_by_owning_ike_sa_and_previous_address_reused(store: Store) -> None:
    pool = AddressPool(store, "10.99.0.0/24", "keyd-1")
    ip = pool.allocate(ike_id(2), "alice")
    assert ip == pool.home("alice")
    assert not pool.release(ip, ike_id(4))          # another IKE SA cannot release it
    assert store.get(PoolLease, ip) is not None
    assert pool.release(ip, ike_id(2))
    assert store.get(PoolLease, ip) is None
    assert pool.allocate(ike_id(6), "alice") == ip  # back again: same address


def test_home_taken_falls_to_next_free(store: Store) -> None:
    pool = AddressPool(store, "10.99.0.0/24", "keyd-1")
    home = pool.home("bob")
    store.create(PoolLease(ip=home, ike_sa_id=ike_id(8), identity="someone-else",
                           keyd_id="keyd-1", leased_at=time.time()))
    store.put(ike_record(8, "someone-else"))
    ip = pool.allocate(ike_id(10), "bob")
    assert ip != home and pool.contains(ip)


def test_requested_address_honoured_when_free(store: Store) -> None:
    pool = AddressPool(store, "10.99.0.0/24", "keyd-1")
    assert pool.allocate(ike_id(2), "carol", requested="10.99.0.77") == "10.99.0.77"
    # outside the pool, or 0.0.0.0 (strongSwan's "any"): ignored
    ip = pool.allocate(ike_id(4), "dave", requested="192.0.2.1")
    assert ip == pool.home("dave")


def test_stale_lease_of_same_identity_is_taken_over(store: Store) -> None:
    pool = AddressPool(store, "10.99.0.0/24", "keyd-1")
    # erin's old IKE SA vanished without releasing its lease (say, a keyd died mid-delete)
    store.create(PoolLease(ip="10.99.0.50", ike_sa_id=ike_id(20), identity="erin",
                           keyd_id="keyd-0", leased_at=time.time()))
    assert pool.allocate(ike_id(22), "erin", requested="10.99.0.50") == "10.99.0.50"
    lease = store.get(PoolLease, "10.99.0.50")
    assert lease is not None and lease.record.ike_sa_id == ike_id(22)
    # a live IKE SA of the same identity keeps its lease: a second device gets another address
    store.put(ike_record(22, "erin"))
    other = pool.allocate(ike_id(24), "erin", requested="10.99.0.50")
    assert other != "10.99.0.50"
