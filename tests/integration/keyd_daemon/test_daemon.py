"""The keyd process: systemd readiness, junk in etcd, an etcd that is not there at start."""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

from cluster.procs import free_port
from cluster.store.client import Store
from cluster.store.records import IkeSaRecord
from cluster.store.watch import wait_for
from keyd.client import ExchangeTimeout

from .conftest import KeydSetup
from .test_persistence import client_for


def test_ready_after_registration_and_stopping_on_sigterm(keyd_setup: KeydSetup,
                                                          tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    try:
        k = keyd_setup.start("keyd-1", env={"NOTIFY_SOCKET": str(path)})
        ready = sock.recv(4096).decode()
        assert "READY=1" in ready and "registered" in k.log.read_text()
        k.proc.terminate()
        assert "STOPPING=1" in sock.recv(4096).decode()
        assert k.proc.wait(30) == 0
    finally:
        sock.close()


def test_junk_ike_record_is_a_counted_drop(keyd_setup: KeydSetup, store: Store) -> None:
    k = keyd_setup.start("keyd-1")
    ike_sa_id = f"{0x1111:016x}{0x2222:016x}"
    store.raw_put(store.keyspace.ike(ike_sa_id), b'{"v": 1, "nonsense": true}')
    # an IKE request naming that SA (INFORMATIONAL, message ID 2, with a short SK payload)
    header = struct.pack("!QQBBBBII", 0x1111, 0x2222, 46, 0x20, 37, 0x08, 2, 28 + 8)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(header + b"\x00\x00\x00\x08" + bytes(4), ("127.0.0.1", k.ike_port))
        assert wait_for(lambda: k.metric("keyd_datagrams_dropped_total",
                                         reason="bad_ike_record") == 1, timeout_s=20)
    # and keyd goes on serving
    with client_for(k, "after-junk@clients.test") as c:
        est = c.connect()
    assert store.get(IkeSaRecord, est.ike_sa_id) is not None
    log = k.log.read_text()
    assert "unusable IKE SA record skipped" in log and "Traceback" not in log


def test_no_etcd_at_start_serves_once_it_appears(keyd_setup: KeydSetup, tmp_path: Path,
                                                 cluster_name: str) -> None:
    from cluster.procs import EtcdServer
    port = free_port()
    keyd_setup.etcd_endpoint = f"http://127.0.0.1:{port}"
    k = keyd_setup.start("keyd-1")          # nothing listens there yet
    with client_for(k, "patient@clients.test", retransmit_timeout_s=1.0,
                    retransmit_tries=15) as c:
        try:
            c.connect(timeout_s=4)
            raise AssertionError("established without etcd")
        except ExchangeTimeout:
            pass
        assert k.proc.poll() is None
        etcd = EtcdServer(tmp_path / "late-etcd", client_port=port)
        etcd.start()
        try:
            c.pump(lambda: c.core.ike_sa_id is not None
                   and c.core.sa.state.value == "established", timeout_s=60)
            assert wait_for(lambda: "registered" in k.log.read_text(), timeout_s=30)
        finally:
            k.kill()
            etcd.stop()
    assert "Traceback" not in k.log.read_text()
    time.sleep(0)


def test_cookies_under_load_and_metrics_by_type(keyd_setup: KeydSetup, store: Store) -> None:
    """With the half-open threshold at 0 every IKE_SA_INIT is answered with a COOKIE first
    (RFC 7296 §2.6); the client repeats it with the cookie and gets in. The metrics say so."""
    k = keyd_setup.start("keyd-1", extra="half_open_cookie_threshold = 0")
    with client_for(k, "cookie-eater@clients.test") as c:
        est = c.connect()
        c.liveness()
    assert store.get(IkeSaRecord, est.ike_sa_id) is not None
    assert k.metric("keyd_cookies_sent_total") >= 1
    assert k.metric("keyd_exchanges_total", type="IKE_SA_INIT") >= 2
    assert k.metric("keyd_exchanges_total", type="INFORMATIONAL") == 1
    assert k.metric("keyd_handshakes_total", result="established") == 1
    assert k.metric("keyd_etcd_write_seconds_count", record="ike_sa+child_sa") == 1
    assert k.metric("keyd_etcd_available") == 1


def test_a_wrong_data_key_is_refused_at_start(keyd_setup: KeydSetup) -> None:
    """A keyd with another data key would skip every stored SA and seal new ones under a key
    no other component has: it refuses to start, naming its key file."""
    k = keyd_setup.start("keyd-1")
    with client_for(k, "sealed@clients.test") as c:
        c.connect()                      # something sealed under the cluster's key
    k.kill()
    keyd_setup.data_key_file.write_text(os.urandom(32).hex() + "\n")
    other = keyd_setup.start("keyd-2", wait=False)
    assert other.proc.wait(60) == 2
    log = other.log.read_text()
    assert str(keyd_setup.data_key_file) in log and "opens none" in log
    assert "Traceback" not in log
