"""MOBIKE and redirect against keyd on loopback with a real etcd, driven by the project's
initiator over real UDP: what etcd holds after a move, an instance killed right after it
answered one, and keyd's `redirect_to`."""

from __future__ import annotations

import json
import os
import signal

from cluster.store.client import Store
from cluster.store.records import ChildSaRecord, IkeSaRecord
from keyd.ike.events import IkeSaMoved

from .conftest import KeydSetup
from .test_persistence import client_for, ready_node


def _moved_in_etcd(store: Store, ike_sa_id: str, spis: list[int], ip: str) -> bool:
    ike = store.get(IkeSaRecord, ike_sa_id)
    children = [store.get(ChildSaRecord, s) for s in spis]
    return ike is not None and ike.record.peer_addr == ip and all(
        c is not None and c.record.peer_addr == ip and c.record.mobike for c in children)


def test_a_move_lands_in_the_ike_sa_and_child_sa_records(keyd_setup: KeydSetup,
                                                          store: Store) -> None:
    ready_node(store)
    k = keyd_setup.start("keyd-1")
    with client_for(k, "mo@clients.test", "127.0.0.21") as c:
        est = c.connect()
        spis = [e.child.spi_out for e in c.children()]
        c.move("127.0.0.22")
        assert any(isinstance(e, IkeSaMoved) for e in c.events)
        # the return routability check comes to the new address and is answered there;
        # then both records name it
        c.pump(lambda: _moved_in_etcd(store, est.ike_sa_id, spis, "127.0.0.22"), 10)
        assert k.metric("keyd_exchanges_total", type="UPDATE_SA_ADDRESSES") == 1
        assert k.metric("keyd_exchanges_total", type="RETURN_ROUTABILITY_PASSED") == 1
        state = json.loads(store.get(IkeSaRecord, est.ike_sa_id).record.state)  # type: ignore[union-attr]
        assert state["mobike"]["verified"][0] == "127.0.0.22" and state["mobike"]["check"] is None
        c.liveness()      # still the same IKE SA, answered at the new address
        assert c.core.sa.id == est.ike_sa_id
        c.delete()


def test_the_next_mobike_message_is_answered_by_another_instance(
        keyd_setup: KeydSetup, store: Store) -> None:
    ready_node(store)
    first = keyd_setup.start("keyd-1")
    with client_for(first, "mo2@clients.test", "127.0.0.23") as c:
        est = c.connect()
        spis = [e.child.spi_out for e in c.children()]
        c.move("127.0.0.24")
        c.pump(lambda: _moved_in_etcd(store, est.ike_sa_id, spis, "127.0.0.24"), 10)
        os.kill(first.proc.pid, signal.SIGKILL)   # right after the update was answered
        first.proc.wait(10)
        second = keyd_setup.start("keyd-2", first.ike_port, first.natt_port)
        c.move("127.0.0.25")                     # the next MOBIKE message
        c.pump(lambda: _moved_in_etcd(store, est.ike_sa_id, spis, "127.0.0.25"), 10)
        assert second.metric("keyd_ike_sas_imported_total") == 1
        assert second.metric("keyd_exchanges_total", type="UPDATE_SA_ADDRESSES") == 1
        assert second.metric("keyd_exchanges_total", type="RETURN_ROUTABILITY_PASSED") == 1
        ike = store.get(IkeSaRecord, est.ike_sa_id)
        assert ike is not None and ike.record.keyd_id == "keyd-2"
        c.delete()


def test_keyd_redirects_new_clients_when_told(keyd_setup: KeydSetup, store: Store) -> None:
    k = keyd_setup.start("keyd-1", extra='redirect_to = "198.51.100.50"')
    with client_for(k, "re@clients.test", "127.0.0.26") as c:
        got = c.redirect_target()
        assert (got.gateway, got.during) == ("198.51.100.50", "ike_sa_init")
    assert store.list(IkeSaRecord).items == []
    assert "client redirected" in k.log.read_text()


def test_an_operator_redirect_request_reaches_the_client(keyd_setup: KeydSetup,
                                                         store: Store) -> None:
    """`clusterctl client redirect` writes redirect/<ike-sa-id>; the instance that holds the
    IKE SA sends REDIRECT in an INFORMATIONAL and takes the request away. The second time,
    the instance that wrote the SA is dead: another one continues it from etcd."""
    import time

    from cluster.store.records import RedirectRequest
    from keyd.ike.events import Redirected

    ready_node(store)
    first = keyd_setup.start("keyd-1")
    with client_for(first, "op@clients.test", "127.0.0.27") as c:
        est = c.connect()
        store.put(RedirectRequest(ike_sa_id=est.ike_sa_id, gateway="vpn2.example.net",
                                  requested_at=time.time()))
        c.pump(lambda: any(isinstance(e, Redirected) for e in c.events), 10)
        got = next(e for e in c.events if isinstance(e, Redirected))
        assert (got.ike_sa_id, got.gateway, got.during) == (est.ike_sa_id, "vpn2.example.net",
                                                            "informational")
        assert store.get(RedirectRequest, est.ike_sa_id) is None
        assert "client asked to move" in first.log.read_text()
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(10)
        second = keyd_setup.start("keyd-2", first.ike_port, first.natt_port)
        store.put(RedirectRequest(ike_sa_id=est.ike_sa_id, gateway="198.51.100.50",
                                  requested_at=time.time()))
        c.pump(lambda: sum(isinstance(e, Redirected) for e in c.events) == 2, 15)
        assert second.metric("keyd_ike_sas_imported_total") == 1
        c.delete()
