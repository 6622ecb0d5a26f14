"""keyd on loopback, driven by the project's initiator over real UDP, against a real etcd.

What a reply implies is already in etcd when the reply arrives: the IKE SA (sealed), the
Child SA with its keys (sealed), the owner assignment and the address lease. Rekeys and
deletes are followed. A second instance continues an IKE SA the first one negotiated.
"""

from __future__ import annotations

import json
import os
import signal
import time

from cluster.store.client import Store
from cluster.store.records import (
    Assignment,
    ChildSaRecord,
    IkeSaRecord,
    KeydRecord,
    NodeRecord,
    PoolLease,
)
from cluster.store.watch import wait_for
from keyd.client import IkeClient

from .conftest import GATEWAY_ID, PSK, KeydSetup


def ready_node(store: Store, node_id: str = "node-a") -> None:
    store.put(NodeRecord(id=node_id, address="10.30.0.11", capacity=100, state="ready",
                         health_port=4501, version="test", started_at=time.time()))


def client_for(k: object, identity: str = "alice@clients.test", local_ip: str = "127.0.0.2",
               **kwargs: object) -> IkeClient:
    return IkeClient.psk(PSK, identity, GATEWAY_ID, local_ip,
                         ("127.0.0.1", k.ike_port), k.natt_port, **kwargs)  # type: ignore[attr-defined]


def test_reply_implies_state_in_etcd(keyd_setup: KeydSetup, store: Store) -> None:
    ready_node(store)
    k = keyd_setup.start("keyd-1")
    with client_for(k) as c:
        est = c.connect()
        # read at once: everything the reply stands for must already be there
        ike = store.get(IkeSaRecord, est.ike_sa_id)
        child = c.children()[0].child
        sa = store.get(ChildSaRecord, child.spi_out)   # the cluster receives with our spi_out
        assign = store.get(Assignment, est.ike_sa_id)
        lease = store.get(PoolLease, est.virtual_ip or "")
    assert ike is not None and sa is not None and assign is not None and lease is not None
    state = json.loads(ike.record.state)
    assert state["peer_next_id"] == 2 and state["state"] == "established"
    assert ike.record.identity == "alice@clients.test" and ike.record.keyd_id == "keyd-1"
    assert ike.record.child_spis == [child.spi_out]
    assert ike.record.virtual_ip == est.virtual_ip
    r = sa.record
    assert (r.spi_out, r.ike_sa_id, r.encr, r.esn) == (child.spi_in, est.ike_sa_id,
                                                       "aes128gcm16", False)
    # the keys the node will use are the client's, mirrored
    assert r.enc_key_in == child.enc_key_out and r.enc_key_out == child.enc_key_in
    assert r.udp_encap and r.peer_addr == "127.0.0.2" and r.peer_port == k.natt_port
    assert r.ts_remote == [f"{est.virtual_ip}/32"] and r.ts_local == ["10.20.0.0/24"]
    assert (assign.record.node, assign.record.epoch, assign.record.phase) == ("node-a", 1,
                                                                              "active")
    assert lease.record.ike_sa_id == est.ike_sa_id
    # key material never lies in etcd in clear
    raw = store.raw_get(sa.key) or b""
    assert r.enc_key_in not in raw and r.enc_key_in.hex().encode() not in raw
    raw_ike = store.raw_get(ike.key) or b""
    assert b"sk_d" not in raw_ike and b"peer_next_id" not in raw_ike
    registered = store.get(KeydRecord, "keyd-1")
    assert registered is not None and registered.lease_id != 0
    assert k.metric("keyd_handshakes_total", result="established") == 1
    assert k.metric("keyd_exchanges_total", type="IKE_AUTH") == 1
    # the log (at debug level here) names the IKE SA and never shows a key
    log = k.log.read_text()
    assert est.ike_sa_id in log
    for key in (r.enc_key_in, r.enc_key_out):
        assert key.hex() not in log and key.hex().upper() not in log
    assert PSK.decode() not in log


def test_rekeys_and_delete_followed_in_etcd(keyd_setup: KeydSetup, store: Store) -> None:
    ready_node(store)
    k = keyd_setup.start("keyd-1")
    with client_for(k, "bob@clients.test") as c:
        est = c.connect()
        old_child = c.children()[0].child
        c.rekey_child(old_child.spi_in, pfs=False)
        new_child = c.children()[-1].child
        assert new_child.spi_in != old_child.spi_in
        assert store.get(ChildSaRecord, old_child.spi_out) is None
        fresh = store.get(ChildSaRecord, new_child.spi_out)
        assert fresh is not None and fresh.record.replaces == old_child.spi_out

        c.rekey_ike()
        new_id = c.core.ike_sa_id
        assert new_id is not None and new_id != est.ike_sa_id
        # the old IKE SA's DELETE is answered at once, its removal rides with keyd's next
        # write or goes a moment later; the old owner in a later revision still
        assert wait_for(lambda: store.get(IkeSaRecord, est.ike_sa_id) is None, timeout_s=5)
        assert wait_for(lambda: store.get(Assignment, est.ike_sa_id) is None, timeout_s=5)
        moved = store.get(Assignment, new_id)
        assert moved is not None and (moved.record.node, moved.record.epoch) == ("node-a", 1)
        sa = store.get(ChildSaRecord, new_child.spi_out)
        assert sa is not None and sa.record.ike_sa_id == new_id
        lease = store.get(PoolLease, est.virtual_ip or "")
        assert lease is not None and lease.record.ike_sa_id == new_id
        ike = store.get(IkeSaRecord, new_id)
        assert ike is not None and ike.record.child_spis == [new_child.spi_out]

        c.delete()
    # a DELETE is answered at once; its removals ride with keyd's next write, or follow a
    # moment later on their own (the owner in a later revision still)
    for kind in (IkeSaRecord, ChildSaRecord, PoolLease, Assignment):
        assert wait_for(lambda kind=kind: store.list(kind).items == [], timeout_s=5), \
            kind.__name__


def test_second_instance_continues_the_ike_sa(keyd_setup: KeydSetup, store: Store) -> None:
    ready_node(store)
    first = keyd_setup.start("keyd-1")
    with client_for(first, "carol@clients.test") as c:
        est = c.connect()
        child = c.children()[0].child
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(10)
        second = keyd_setup.start("keyd-2", first.ike_port, first.natt_port)
        c.liveness()                                    # INFORMATIONAL, message ID 2
        c.rekey_child(child.spi_in)                     # CREATE_CHILD_SA, then DELETE
        newest = c.children()[-1].child
        c.rekey_ike()                                   # the IKE SA itself
        assert c.core.ike_sa_id != est.ike_sa_id
        assert second.metric("keyd_ike_sas_imported_total") == 1
        ike = store.get(IkeSaRecord, c.core.ike_sa_id or "")
        assert ike is not None and ike.record.keyd_id == "keyd-2"
        sa = store.get(ChildSaRecord, newest.spi_out)
        assert sa is not None and sa.record.ike_sa_id == c.core.ike_sa_id
        assert store.get(ChildSaRecord, child.spi_out) is None
        c.delete()
    assert wait_for(lambda: store.list(IkeSaRecord).items == [], timeout_s=5)
    assert "continuing IKE SA from etcd" in second.log.read_text()


def test_two_clients_get_distinct_spis_and_addresses(keyd_setup: KeydSetup,
                                                     store: Store) -> None:
    k = keyd_setup.start("keyd-1")
    with client_for(k, "dave@clients.test", "127.0.0.3") as a, \
            client_for(k, "erin@clients.test", "127.0.0.4") as b:
        ea, eb = a.connect(), b.connect()
        assert ea.virtual_ip != eb.virtual_ip
        assert a.children()[0].child.spi_out != b.children()[0].child.spi_out
    leases = {v.record.ip for v in store.list(PoolLease).items}
    assert leases == {ea.virtual_ip, eb.virtual_ip}
    # no ready node: no owner written (the sprayer assigns later), and it says so
    assert wait_for(lambda: store.list(Assignment).items == [], timeout_s=5)
    assert "no ready node" in k.log.read_text()


def test_initial_contact_removes_the_older_ike_sa_of_the_identity(
        keyd_setup: KeydSetup, store: Store) -> None:
    ready_node(store)
    k = keyd_setup.start("keyd-1")
    with client_for(k, "frank@clients.test", "127.0.0.5") as before:
        old = before.connect()
        old_spi = before.children()[0].child.spi_out
    # the client restarted: it knows nothing of its old IKE SA and says so (INITIAL_CONTACT)
    with client_for(k, "frank@clients.test", "127.0.0.6") as after:
        new = after.connect()
        new_spi = after.children()[0].child.spi_out
        assert store.get(IkeSaRecord, old.ike_sa_id) is None
        assert store.get(ChildSaRecord, old_spi) is None
        assert wait_for(lambda: store.get(Assignment, old.ike_sa_id) is None, timeout_s=5)
        # and it gets its old address back (the lease is taken over, not released)
        assert new.virtual_ip == old.virtual_ip
        lease = store.get(PoolLease, new.virtual_ip or "")
        assert lease is not None and lease.record.ike_sa_id == new.ike_sa_id
        assert store.get(IkeSaRecord, new.ike_sa_id) is not None
        assert store.get(ChildSaRecord, new_spi) is not None
    # a client that does not say INITIAL_CONTACT (a second device) keeps the first one
    with client_for(k, "gina@clients.test", "127.0.0.7") as one, \
            client_for(k, "gina@clients.test", "127.0.0.8", initial_contact=False) as two:
        first, second = one.connect(), two.connect()
        assert store.get(IkeSaRecord, first.ike_sa_id) is not None
        assert store.get(IkeSaRecord, second.ike_sa_id) is not None
    assert "INITIAL_CONTACT" in k.log.read_text()
    # a client that comes and goes: each visit at most one removal of its own (it may ride
    # with the next visit's write), however many visits before
    deletes = k.metric("keyd_etcd_write_seconds_count", record="delete")
    for _ in range(4):
        with client_for(k, "ivan@clients.test", "127.0.0.9") as visit:
            est = visit.connect()
            visit.delete()
    assert wait_for(lambda: store.get(IkeSaRecord, est.ike_sa_id) is None, timeout_s=5)
    assert k.metric("keyd_etcd_write_seconds_count", record="delete") - deletes <= 4
    assert not [v for v in store.list(IkeSaRecord).items
                if v.record.identity == "ivan@clients.test"]


def test_client_moves_to_another_instance_and_back(keyd_setup: KeydSetup,
                                                   store: Store) -> None:
    """Two live instances on the same ports: Linux hands a UDP port's datagrams to the socket
    bound last, so starting keyd-2 moves the client there and stopping it moves the client
    back to keyd-1, whose copy of the IKE SA is stale by then."""
    from cluster.store.watch import wait_for

    one = keyd_setup.start("keyd-1")
    with client_for(one, "hana@clients.test") as c:
        c.connect()
        two = keyd_setup.start("keyd-2", one.ike_port, one.natt_port)
        assert wait_for(lambda: "other keyd instances registered" in one.log.read_text(),
                        timeout_s=20)
        c.liveness()
        c.rekey_child(c.children()[-1].child.spi_in)
        assert two.metric("keyd_ike_sas_imported_total") == 1
        assert wait_for(lambda: "continued by another instance" in one.log.read_text(),
                        timeout_s=20)
        two.proc.terminate()
        assert two.proc.wait(30) == 0
        c.liveness()                                 # keyd-1 again: reads the SA afresh
        c.rekey_child(c.children()[-1].child.spi_in)
        assert one.metric("keyd_ike_sas_imported_total") == 1
        ike = store.get(IkeSaRecord, c.core.ike_sa_id or "")
        assert ike is not None and ike.record.keyd_id == "keyd-1"
        assert ike.record.child_spis == [c.children()[-1].child.spi_out]
        c.delete()
    assert wait_for(lambda: store.list(ChildSaRecord).items == [], timeout_s=5)


def test_retransmission_answered_by_the_next_instance_from_the_cached_response(
        keyd_setup: KeydSetup, store: Store) -> None:
    """RFC 7296 §2.1: a retransmitted request gets the very same response. The response is
    part of the state in etcd, so an instance that never saw the request can give it."""
    first = keyd_setup.start("keyd-1")
    with client_for(first, "jane@clients.test") as c:
        c.connect()
        c.liveness()
        request = c.sent[-1]
        answer = c.received[-1]
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(10)
        keyd_setup.start("keyd-2", first.ike_port, first.natt_port)
        assert c.resend(request) == answer          # byte for byte
        c.liveness()                                # and the next request is answered too
        c.delete()
