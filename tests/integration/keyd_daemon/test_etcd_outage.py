"""keyd while its etcd is down: nothing that could not be written is answered, established
clients keep their liveness answers, one log line and a metric say so, and negotiations
complete once etcd is back."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.procs import EtcdServer
from cluster.store.client import Store
from cluster.store.keyspace import Keyspace
from cluster.store.records import ChildSaRecord, IkeSaRecord, KeydRecord
from cluster.store.seal import DataKey
from cluster.store.watch import wait_for
from keyd.client import ExchangeTimeout, IkeClient
from keyd.engine import ETCD_REFUSE_AFTER_S
from keyd.ike import ExchangeFailed
from keyd.ike.constants import Notify

from .conftest import GATEWAY_ID, PSK, KeydSetup


@pytest.fixture
def own_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path / "own-etcd")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def quick_client(k: object, identity: str, local_ip: str) -> IkeClient:
    # short retransmissions so the client's own retries span the outage
    return IkeClient.psk(PSK, identity, GATEWAY_ID, local_ip, ("127.0.0.1", k.ike_port),  # type: ignore[attr-defined]
                         k.natt_port, retransmit_timeout_s=1.0, retransmit_tries=12)  # type: ignore[attr-defined]


def test_no_completion_while_etcd_is_down_and_completion_after(
        keyd_setup: KeydSetup, own_etcd: EtcdServer, data_key: DataKey,
        cluster_name: str) -> None:
    keyd_setup.etcd_endpoint = own_etcd.endpoint
    store = Store([own_etcd.endpoint], Keyspace(cluster_name), data_key, timeout_s=5.0)
    k = keyd_setup.start("keyd-1")
    with quick_client(k, "old@clients.test", "127.0.0.2") as old, \
            quick_client(k, "new@clients.test", "127.0.0.3") as new:
        est_old = old.connect()
        old_spi = old.children()[0].child.spi_out
        state_before = json.loads(store.get(IkeSaRecord, est_old.ike_sa_id).record.state)  # type: ignore[union-attr]
        store.close()

        own_etcd.stop()
        with pytest.raises(ExchangeTimeout):
            new.connect(timeout_s=6)
        # a half-open IKE SA needs no etcd: IKE_SA_INIT is answered, IKE_AUTH is not
        assert new.core.sa.state.value == "auth_sent"
        old.liveness(timeout_s=20)                          # established: still answered
        assert k.metric("keyd_etcd_available") == 0
        assert k.metric("keyd_etcd_outages_total") == 1
        assert k.metric("keyd_replies_withheld_total") >= 1

        own_etcd.start()
        # the new client's retransmissions go on; once etcd takes writes it completes
        new.pump(lambda: new.core.ike_sa_id is not None
                 and new.core.sa.state.value == "established", timeout_s=60)
        est_new_id = new.core.ike_sa_id

    store = Store([own_etcd.endpoint], Keyspace(cluster_name), data_key, timeout_s=5.0)
    try:
        assert store.get(ChildSaRecord, old_spi) is not None   # established SA untouched
        ike_new = store.get(IkeSaRecord, est_new_id or "")
        assert ike_new is not None and ike_new.record.child_spis
        # the liveness answer given during the outage was written when etcd came back
        assert wait_for(lambda: json.loads(store.get(IkeSaRecord, est_old.ike_sa_id)  # type: ignore[union-attr]
                                           .record.state)["peer_next_id"]
                        > state_before["peer_next_id"], timeout_s=15)
        assert wait_for(lambda: store.get(KeydRecord, "keyd-1") is not None, timeout_s=20)
    finally:
        store.close()
    assert wait_for(lambda: k.metric("keyd_etcd_available") == 1, timeout_s=10)
    log = k.log.read_text()
    assert log.count("etcd does not take writes") == 1
    assert "etcd takes writes again" in log
    assert "Traceback" not in log
    time.sleep(0)  # keep the instance up until here: the fixture stops it


def test_reply_waits_for_the_etcd_write(keyd_setup: KeydSetup, own_etcd: EtcdServer) -> None:
    """Persist first, then reply: with etcd frozen (SIGSTOP) for less than keyd's etcd
    timeout, the answer to IKE_AUTH (which completes the IKE SA and its Child SA) can only
    come after etcd is thawed. The answer to IKE_SA_INIT does not wait: a half-open IKE SA
    is written after its answer (docs/keyd.md)."""
    import os
    import signal
    import threading

    keyd_setup.etcd_endpoint = own_etcd.endpoint
    k = keyd_setup.start("keyd-1")
    assert own_etcd.pid is not None
    thawed_at: list[float] = []

    def thaw() -> None:
        time.sleep(0.5)
        thawed_at.append(time.monotonic())
        os.kill(own_etcd.pid, signal.SIGCONT)  # type: ignore[arg-type]

    with quick_client(k, "orderly@clients.test", "127.0.0.2") as c:
        os.kill(own_etcd.pid, signal.SIGSTOP)
        t = threading.Thread(target=thaw)
        t.start()
        try:
            c.core.connect(c.local, c.remote, time.time())
            c.pump(lambda: len(c.received) >= 1, timeout_s=20)
            init_answer_at = time.monotonic()
            c.pump(lambda: len(c.received) >= 2, timeout_s=20)
            auth_answer_at = time.monotonic()
        finally:
            t.join()
        assert thawed_at and init_answer_at < thawed_at[0] < auth_answer_at
        c.pump(lambda: c.core.ike_sa_id is not None
               and c.core.sa.state.value == "established", timeout_s=20)


def test_new_client_refused_once_etcd_is_known_gone_then_served(
        keyd_setup: KeydSetup, own_etcd: EtcdServer) -> None:
    """Once keyd knows etcd does not take writes (here: its lease lost for etcd's silence,
    with no write tried) for ETCD_REFUSE_AFTER_S, a new client's IKE_SA_INIT is answered
    with TEMPORARY_FAILURE — a clear, immediate failure for the client, counted — while an
    established client's liveness checks are answered; once etcd is back, a new client is
    served."""
    keyd_setup.etcd_endpoint = own_etcd.endpoint
    k = keyd_setup.start("keyd-1")
    with quick_client(k, "old@clients.test", "127.0.0.2") as old:
        old.connect()
        own_etcd.stop()
        # nothing is written meanwhile: keyd learns of the outage from its lease
        assert wait_for(lambda: k.metric("keyd_etcd_available") == 0, timeout_s=30)
        time.sleep(ETCD_REFUSE_AFTER_S + 0.5)   # past a blip, whichever way keyd learnt of it
        with quick_client(k, "refused@clients.test", "127.0.0.3") as refused:
            refused.core.connect(refused.local, refused.remote, time.time())
            refused.pump(lambda: any(isinstance(e, ExchangeFailed) for e in refused.events),
                         timeout_s=30)
            [failed] = [e for e in refused.events if isinstance(e, ExchangeFailed)]
            assert failed.notify == Notify.TEMPORARY_FAILURE
            assert "TEMPORARY_FAILURE" in failed.reason
            # one request, one answer: the client was told at once, not left retransmitting
            assert len(refused.received) == 1 and len(refused.sent) == 1
        assert k.metric("keyd_ike_sa_init_refused_total", reason="etcd_unavailable") >= 1
        # the core's counters reach the metrics with its next timer tick
        assert wait_for(lambda: k.metric("keyd_errors_total", notify="TEMPORARY_FAILURE") >= 1,
                        timeout_s=10)
        old.liveness(timeout_s=20)                          # established: still answered

        own_etcd.start()
        assert wait_for(lambda: k.metric("keyd_etcd_available") == 1, timeout_s=30)
        with quick_client(k, "later@clients.test", "127.0.0.4") as later:
            est = later.connect(timeout_s=30)
            assert est.virtual_ip is not None and later.children()
    log = k.log.read_text()
    assert log.count("etcd does not take writes") == 1
    assert "Traceback" not in log


def test_eap_rounds_go_on_while_etcd_is_down_and_complete_after(
        keyd_setup: KeydSetup, own_etcd: EtcdServer, data_key: DataKey, cluster_name: str,
        tmp_path: Path) -> None:
    """etcd stopped after IKE_SA_INIT: the EAP rounds are answered from memory (they complete
    nothing), the last IKE_AUTH answer is withheld; once etcd is back the client's
    retransmission of it completes — from the rounds answered, not from before them."""
    from .test_eap import eap_client, local_eap

    keyd_setup.etcd_endpoint = own_etcd.endpoint
    k = keyd_setup.start("keyd-1", extra=local_eap(tmp_path))
    with eap_client(k, "carol", "s3cret", retransmit_timeout_s=1.0,
                    retransmit_tries=30) as c:
        c.core.connect(c.local, c.remote, time.time())
        c.pump(lambda: len(c.received) >= 1, timeout_s=20)   # IKE_SA_INIT answered
        own_etcd.stop()
        # EAP-Identity, the MSCHAPv2 challenge, its success request and the EAP-Success:
        # answered meanwhile
        c.pump(lambda: len(c.received) >= 5, timeout_s=30)
        assert c.core.virtual_ip is None
        assert wait_for(lambda: k.metric("keyd_replies_withheld_total") >= 1, timeout_s=20)
        own_etcd.start()
        c.pump(lambda: c.core.virtual_ip is not None, timeout_s=60)
        assert c.children()
        ike_sa_id = c.core.ike_sa_id
    store = Store([own_etcd.endpoint], Keyspace(cluster_name), data_key, timeout_s=5.0)
    try:
        held = store.get(IkeSaRecord, ike_sa_id or "")
        assert held is not None and held.record.identity == "carol" and held.record.child_spis
    finally:
        store.close()
    assert "Traceback" not in k.log.read_text()
