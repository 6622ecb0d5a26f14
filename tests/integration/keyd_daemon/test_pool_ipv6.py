"""The IPv6 pool against a real etcd: the same claims and releases as the IPv4 pool (one
implementation, keyd/pool.py), and a dual-stack client's two leases kept apart by family."""

from __future__ import annotations

import ipaddress
import time

import pytest

from cluster.store.client import Store
from cluster.store.records import PoolLease
from keyd.pool import AddressPool, PoolExhausted
from keyd.view import ClusterView

from .test_pool import ike_id, ike_record

POOL6 = "fd00:99::/125"   # 8 addresses: 6 to lease


def test_two_instances_never_lease_one_ipv6_address_twice(store: Store) -> None:
    a = AddressPool(store, POOL6, "keyd-a")
    b = AddressPool(store, POOL6, "keyd-b")
    got = [(a if i % 2 else b).allocate(ike_id(i * 2 + 2), f"client-{i}") for i in range(6)]
    assert len(set(got)) == 6
    assert all(ipaddress.IPv6Address(ip) in ipaddress.IPv6Network(POOL6) for ip in got)
    assert "fd00:99::" not in got and "fd00:99::7" not in got
    with pytest.raises(PoolExhausted):
        a.allocate(ike_id(100), "client-x")
    assert {v.record.ip for v in store.list(PoolLease).items} == set(got)


def test_ipv6_pool_contains_and_home() -> None:
    pool = AddressPool(None, "fd00:99::/64", "keyd-1")  # type: ignore[arg-type]
    home = pool.home("alice")
    assert pool.contains(home) and home == pool.home("alice")
    assert ipaddress.IPv6Address(home) in ipaddress.IPv6Network("fd00:99::/64")
    assert not pool.contains("fd00:98::1") and not pool.contains("10.99.0.1")
    assert not pool.contains("fd00:99::") and not pool.contains(None)
    assert not AddressPool(None, "10.99.0.0/24", "k").contains(home)  # type: ignore[arg-type]


def test_dual_stack_client_holds_one_lease_per_family(store: Store) -> None:
    view = ClusterView()
    view.start(store)
    try:
        deadline = time.monotonic() + 10
        while not view.leases_synced and time.monotonic() < deadline:
            time.sleep(0.02)
        v4 = AddressPool(store, "10.99.0.0/24", "keyd-1", view=view)
        v6 = AddressPool(store, "fd00:99::/64", "keyd-1", view=view)
        ip4 = v4.allocate(ike_id(2), "alice")
        # the IPv4 lease of the same IKE SA is not the IPv6 one: a lease of its own
        ip6 = v6.allocate(ike_id(2), "alice")
        assert ipaddress.ip_address(ip6).version == 6 and ip6 == v6.home("alice")
        assert v6.allocate(ike_id(2), "alice") == ip6 and v4.allocate(ike_id(2), "alice") == ip4
        assert {v.record.ip for v in store.list(PoolLease).items} == {ip4, ip6}
        # the requested address (spelled any way) is honoured when free
        assert v6.allocate(ike_id(4), "bob", requested="FD00:99:0:0::77") == "fd00:99::77"
        # a returning client whose old IKE SA is gone gets its own old address back
        assert v6.release(ip6, ike_id(2))
        store.put(ike_record(6, "carol"))
        assert v6.allocate(ike_id(8), "alice") == ip6
        assert v4.release(ip4, ike_id(2)) and store.get(PoolLease, ip6) is not None
    finally:
        view.stop()
