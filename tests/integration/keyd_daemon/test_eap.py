"""EAP in IKE_AUTH through the keyd daemon (real etcd; a real FreeRADIUS for eap-radius):
keyd's own initiator as the client, over UDP on loopback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from cluster.freeradius import FreeRadiusServer, RadiusUser
from cluster.pki import CertAuthority
from cluster.procs import EtcdServer
from cluster.store.client import Store
from cluster.store.keyspace import Keyspace
from cluster.store.records import IkeSaRecord
from cluster.store.seal import DataKey
from cluster.store.watch import wait_for
from keyd.client import ExchangeTimeout, IkeClient

from .conftest import GATEWAY_ID, KeydSetup
from .test_persistence import client_for

RADIUS_SECRET = "keyd-radius-secret"


def eap_users(tmp_path: Path) -> Path:
    path = tmp_path / "eap-users.toml"
    path.write_text('[eap_users]\ncarol = "s3cret"\n"ACME\\\\dave" = "pässwörd"\n')
    path.chmod(0o600)
    return path


def gateway_cert(tmp_path: Path) -> str:
    """keyd proves itself by certificate on EAP (RFC 7296 §2.16, and the [keyd] eap
    connection): a CA and a gateway certificate; the clients trust the CA."""
    ca = CertAuthority.create("EAP test CA")
    ca.write_pem(tmp_path / "ca.pem", tmp_path / "ca-key.pem")
    CA_CERTS[:] = [ca.cert]
    ca.issue(GATEWAY_ID, [GATEWAY_ID], server=True).write_pem(tmp_path / "gw.pem",
                                                              tmp_path / "gw-key.pem")
    (tmp_path / "gw-key.pem").chmod(0o600)
    return (f'cert_file = "{tmp_path / "gw.pem"}"\nkey_file = "{tmp_path / "gw-key.pem"}"\n'
            f'ca_file = "{tmp_path / "ca.pem"}"\n')


CA_CERTS: list[x509.Certificate] = []


def local_eap(tmp_path: Path) -> str:
    return (gateway_cert(tmp_path)
            + f'eap = "eap-mschapv2"\neap_users_file = "{eap_users(tmp_path)}"\n')


def eap_client(k: object, user: str, password: str, **kw: object) -> IkeClient:
    return client_for(k, "192.0.2.10", eap_identity=user, eap_password=password,
                      cas=tuple(CA_CERTS), **kw)


def test_eap_mschapv2_establishes_and_refusals_are_counted(keyd_setup: KeydSetup,
                                                           store: Store,
                                                           tmp_path: Path) -> None:
    k = keyd_setup.start("keyd-1", extra=local_eap(tmp_path))
    with eap_client(k, "ACME\\dave", "pässwörd") as c:
        est = c.connect()
        assert c.core.virtual_ip is not None and c.children()
    record = store.get(IkeSaRecord, est.ike_sa_id)
    assert record is not None and record.record.identity == "ACME\\dave"
    for user, password in (("carol", "not-her-password"), ("mallory", "s3cret")):
        with eap_client(k, user, password) as c, pytest.raises(ExchangeTimeout):
            c.connect(timeout_s=20)
    assert k.metric("keyd_eap_failures_total", reason="bad password") == 1
    assert k.metric("keyd_eap_failures_total", reason="unknown user") == 1
    log = k.log.read_text()
    assert "Traceback" not in log
    assert "s3cret" not in log and "not-her-password" not in log  # never a password


def test_another_keyd_continues_an_eap_conversation(keyd_setup: KeydSetup, store: Store,
                                                    tmp_path: Path) -> None:
    """keyd-1 is killed (SIGKILL) in the middle of EAP-MSCHAPv2: the client has the challenge
    and has sent its Response, which keyd-1 answered and wrote (docs/eap.md: the write follows
    the answer at once); keyd-2, on the same ports, answers the client's next messages from
    etcd and the client establishes."""
    extra = local_eap(tmp_path)
    k1 = keyd_setup.start("keyd-1", extra=extra)
    with eap_client(k1, "carol", "s3cret", retransmit_timeout_s=1.0,
                    retransmit_tries=10) as c:
        c.core.connect(c.local, c.remote, time.time())
        c.pump(lambda: len(c.received) >= 3, timeout_s=20)  # INIT, identity, challenge
        ike_sa_id = c.core.ike_sa_id
        assert ike_sa_id is not None
        # the client answered the challenge at once (IKE_AUTH request 3); that round is in
        # etcd, and the client sends nothing more until it is pumped again
        assert wait_for(lambda: (_next_request_id(store, ike_sa_id) or 0) >= 4, timeout_s=5)
        os.kill(k1.proc.pid, signal.SIGKILL)
        k1.proc.wait(10)
        k2 = keyd_setup.start("keyd-2", ike_port=k1.ike_port, natt_port=k1.natt_port,
                              extra=extra)
        c.pump(lambda: c.core.virtual_ip is not None, timeout_s=30)
        assert c.children()
    assert k2.metric("keyd_exchanges_total", type="IKE_AUTH") >= 1
    assert k2.metric("keyd_handshakes_total", result="established") == 1


def _next_request_id(store: Store, ike_sa_id: str) -> int | None:
    held = store.get(IkeSaRecord, ike_sa_id)
    return None if held is None else int(json.loads(held.record.state)["peer_next_id"])


def test_eap_rounds_answered_before_their_write(keyd_setup: KeydSetup, tmp_path: Path,
                                                cluster_name: str,
                                                data_key: DataKey) -> None:
    """An EAP round completes nothing: its answer leaves at once and its write follows
    (docs/eap.md). With etcd frozen (SIGSTOP, shorter than keyd's etcd timeout) right after
    IKE_SA_INIT, the first EAP request comes while etcd is still frozen; the answer that
    establishes the IKE SA and its Child SA only after etcd is thawed, and the client
    establishes with every round in etcd."""
    own_etcd = EtcdServer(tmp_path / "own-etcd")
    own_etcd.start()
    try:
        _answered_before_written(keyd_setup, own_etcd, tmp_path,
                                 Store([own_etcd.endpoint], Keyspace(cluster_name), data_key,
                                       timeout_s=5.0))
    finally:
        own_etcd.stop()


def _answered_before_written(keyd_setup: KeydSetup, own_etcd: EtcdServer, tmp_path: Path,
                             store: Store) -> None:
    keyd_setup.etcd_endpoint = own_etcd.endpoint
    etcd_pid = own_etcd.pid
    assert etcd_pid is not None
    k = keyd_setup.start("keyd-1", extra=local_eap(tmp_path))
    thawed_at: list[float] = []

    def thaw() -> None:
        time.sleep(1.0)
        thawed_at.append(time.monotonic())
        os.kill(etcd_pid, signal.SIGCONT)

    with eap_client(k, "carol", "s3cret", retransmit_timeout_s=1.0,
                    retransmit_tries=10) as c:
        c.core.connect(c.local, c.remote, time.time())
        c.pump(lambda: len(c.received) >= 1, timeout_s=20)   # IKE_SA_INIT answered
        os.kill(etcd_pid, signal.SIGSTOP)
        t = threading.Thread(target=thaw)
        t.start()
        try:
            c.pump(lambda: len(c.received) >= 2, timeout_s=20)   # the EAP-Identity request
            first_round_at = time.monotonic()
            c.pump(lambda: c.core.virtual_ip is not None, timeout_s=30)
            established_at = time.monotonic()
        finally:
            t.join()
            os.kill(etcd_pid, signal.SIGCONT)
        assert thawed_at and first_round_at < thawed_at[0] < established_at
        assert c.children()
        ike_sa_id = c.core.ike_sa_id
    assert ike_sa_id is not None
    record = store.get(IkeSaRecord, ike_sa_id)
    assert record is not None and record.record.identity == "carol"
    assert k.metric("keyd_replies_withheld_total") == 0
    assert "Traceback" not in k.log.read_text()


@pytest.fixture
def freeradius(tmp_path: Path) -> Iterator[FreeRadiusServer]:
    if shutil.which("freeradius") is None:
        pytest.fail("freeradius is not installed: run `make bootstrap`")
    server = FreeRadiusServer(tmp_path / "freeradius", [
        RadiusUser("carol", "s3cret", {"Framed-IP-Address": "10.99.0.77"})], RADIUS_SECRET)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_eap_radius_through_freeradius(keyd_setup: KeydSetup, tmp_path: Path,
                                       freeradius: FreeRadiusServer) -> None:
    secret = tmp_path / "radius-secret"
    secret.write_text(RADIUS_SECRET + "\n")
    secret.chmod(0o600)
    k = keyd_setup.start("keyd-1", extra=gateway_cert(tmp_path) + (
        f'eap = "eap-radius"\nradius_servers = ["127.0.0.1:{freeradius.port}"]\n'
        f'radius_secret_file = "{secret}"\nradius_timeout_s = 0.5\nradius_tries = 4\n'))
    with eap_client(k, "carol", "s3cret") as c:
        est = c.connect()
        assert est.identity == "vpn.test.example"
        assert c.core.virtual_ip == "10.99.0.77"  # Framed-IP-Address
    with eap_client(k, "carol", "wrong") as c, pytest.raises(ExchangeTimeout):
        c.connect(timeout_s=20)
    assert k.metric("keyd_eap_failures_total", reason="radius reject") == 1
    assert "Traceback" not in k.log.read_text()
