"""The sweeper against a real etcd: what a dead instance left behind for a client that never
came back goes; anything current stays."""

from __future__ import annotations

import time

from cluster.store.client import Store
from cluster.store.records import Assignment, ChildSaRecord, IkeSaRecord, PoolLease
from keyd.metrics import KeydMetrics
from keyd.persist import Persister
from keyd.pool import AddressPool

HOUR = 3600.0


def ike(n: int, updated_at: float, ip: str, children: list[int]) -> IkeSaRecord:
    return IkeSaRecord(ike_sa_id=f"{n:016x}{n:016x}", spi_i=n, spi_r=n, peer_addr="192.0.2.9",
                       peer_port=4500, local_port=4500, identity=f"c{n}", virtual_ip=ip,
                       child_spis=children, keyd_id="keyd-dead", updated_at=updated_at,
                       state=b'{"secret": "state"}')


def child(spi: int, ike_sa_id: str, created_at: float) -> ChildSaRecord:
    return ChildSaRecord(
        spi_in=spi, spi_out=spi + 1, ike_sa_id=ike_sa_id, encr="aes128gcm16", integ=None,
        esn=False, enc_key_in=bytes(20), integ_key_in=b"", enc_key_out=bytes(20),
        integ_key_out=b"", ts_local=["10.20.0.0/24"], ts_remote=["10.99.0.1/32"],
        peer_addr="192.0.2.9", peer_port=4500, udp_encap=True, virtual_ip="10.99.0.1",
        identity="c", created_at=created_at, soft_lifetime_s=3600, hard_lifetime_s=3960)


def owner(ike_sa_id: str, updated_at: float) -> Assignment:
    return Assignment(ike_sa_id=ike_sa_id, node="node-1", epoch=1, phase="active",
                      previous_node=None, updated_at=updated_at)


def lease(ip: str, ike_sa_id: str) -> PoolLease:
    return PoolLease(ip=ip, ike_sa_id=ike_sa_id, identity="c", keyd_id="keyd-dead",
                     leased_at=0.0)


def test_sweeper_removes_what_nobody_holds(store: Store) -> None:
    now = time.time()
    old = ike(1, now - 7 * HOUR, "10.99.0.1", [0x1001])
    live = ike(2, now - 60, "10.99.0.2", [0x2001])
    for r in (old, live):
        store.put(r)
        store.put(owner(r.ike_sa_id, now - 7 * HOUR))
        store.put(lease(r.virtual_ip or "", r.ike_sa_id))
    store.put(child(0x1001, old.ike_sa_id, now - 7 * HOUR))
    store.put(child(0x2001, live.ike_sa_id, now - 60))
    store.put(child(0x2002, live.ike_sa_id, now - 2 * HOUR))   # past its hard lifetime
    orphan = f"{3:016x}{3:016x}"
    store.put(owner(orphan, now - HOUR))                        # owner of a gone IKE SA

    metrics = KeydMetrics()
    persister = Persister(store, AddressPool(store, "10.99.0.0/24", "keyd-1"), metrics)
    gone = persister.sweep_expired(max_age_s=6 * HOUR)

    assert gone == [old.ike_sa_id]
    assert store.get(IkeSaRecord, old.ike_sa_id) is None
    assert store.get(Assignment, old.ike_sa_id) is None
    assert store.get(PoolLease, "10.99.0.1") is None
    assert store.get(ChildSaRecord, 0x1001) is None
    assert store.get(ChildSaRecord, 0x2002) is None
    assert store.get(Assignment, orphan) is None
    assert store.get(IkeSaRecord, live.ike_sa_id) is not None
    assert store.get(Assignment, live.ike_sa_id) is not None
    assert store.get(PoolLease, "10.99.0.2") is not None
    assert store.get(ChildSaRecord, 0x2001) is not None
    assert metrics.value("keyd_ike_sas_swept_total") == 1
