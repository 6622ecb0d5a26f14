"""A dual-stack client against keyd on loopback and a real etcd: its IPv4 and IPv6 leases are
written with its IKE SA, follow an IKE rekey, and go with its DELETE; another keyd instance
continues the IKE SA with both addresses."""

from __future__ import annotations

import ipaddress
import os
import signal

from cluster.store.client import Store
from cluster.store.records import ChildSaRecord, IkeSaRecord, PoolLease
from cluster.store.watch import wait_for

from .conftest import KeydSetup
from .test_persistence import client_for, ready_node

POOL6 = 'pool6 = "fd00:99::/112"'
NETWORKS = ("10.20.0.0/24", "fd00:20::/64")
BOTH = {"request_address6": True, "ts_local": ("0.0.0.0/0", "::/0"),
        "ts_remote": ("0.0.0.0/0", "::/0")}


def test_dual_stack_leases_follow_the_ike_sa(keyd_setup: KeydSetup, store: Store) -> None:
    ready_node(store)
    k = keyd_setup.start("keyd-1", extra=POOL6, protected_networks=NETWORKS)
    with client_for(k, "dana@clients.test", **BOTH) as c:
        est = c.connect()
        ip4, ip6 = est.virtual_ip, est.virtual_ip6
        assert ip4 is not None and ipaddress.ip_address(ip4) in ipaddress.ip_network(
            "10.99.0.0/24")
        assert ip6 is not None and ipaddress.ip_address(ip6) in ipaddress.ip_network(
            "fd00:99::/112")
        ike = store.get(IkeSaRecord, est.ike_sa_id)
        assert ike is not None and (ike.record.virtual_ip, ike.record.virtual_ip6) == (ip4, ip6)
        child = c.children()[0].child
        sa = store.get(ChildSaRecord, child.spi_out)
        assert sa is not None and sa.record.virtual_ip6 == ip6
        assert sorted(sa.record.ts_remote) == sorted([f"{ip4}/32", f"{ip6}/128"])
        assert sorted(sa.record.ts_local) == sorted(NETWORKS)
        leases = {v.record.ip: v.record.ike_sa_id for v in store.list(PoolLease).items}
        assert leases == {ip4: est.ike_sa_id, ip6: est.ike_sa_id}

        c.rekey_ike()
        new_id = c.core.ike_sa_id
        assert new_id is not None and new_id != est.ike_sa_id
        assert wait_for(lambda: store.get(IkeSaRecord, est.ike_sa_id) is None, timeout_s=5)
        leases = {v.record.ip: v.record.ike_sa_id for v in store.list(PoolLease).items}
        assert leases == {ip4: new_id, ip6: new_id}
        moved = store.get(IkeSaRecord, new_id)
        assert moved is not None and moved.record.virtual_ip6 == ip6
        c.delete()
    assert wait_for(lambda: store.list(PoolLease).items == [], timeout_s=5)


def test_an_ipv4_only_client_of_a_dual_stack_keyd_gets_one_lease(
        keyd_setup: KeydSetup, store: Store) -> None:
    ready_node(store)
    k = keyd_setup.start("keyd-1", extra=POOL6, protected_networks=NETWORKS)
    with client_for(k, "erik@clients.test") as c:
        est = c.connect()
        assert est.virtual_ip is not None and est.virtual_ip6 is None
        assert [v.record.ip for v in store.list(PoolLease).items] == [est.virtual_ip]
        sa = store.get(ChildSaRecord, c.children()[0].child.spi_out)
        assert sa is not None and sa.record.virtual_ip6 is None
        assert sa.record.ts_remote == [f"{est.virtual_ip}/32"]


def test_second_instance_continues_with_both_addresses(keyd_setup: KeydSetup,
                                                       store: Store) -> None:
    ready_node(store)
    first = keyd_setup.start("keyd-1", extra=POOL6, protected_networks=NETWORKS)
    with client_for(first, "fred@clients.test", **BOTH) as c:
        est = c.connect()
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(10)
        keyd_setup.start("keyd-2", first.ike_port, first.natt_port, extra=POOL6,
                         protected_networks=NETWORKS)
        old = c.children()[0].child
        c.rekey_child(old.spi_in)
        fresh = c.children()[-1].child
        sa = store.get(ChildSaRecord, fresh.spi_out)
        assert sa is not None and sa.record.virtual_ip6 == est.virtual_ip6
        assert sorted(sa.record.ts_remote) == sorted([f"{est.virtual_ip}/32",
                                                      f"{est.virtual_ip6}/128"])
