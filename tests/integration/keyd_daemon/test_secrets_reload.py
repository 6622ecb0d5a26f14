"""The secrets file on a running keyd: PSKs by identity, read again on SIGHUP without any SA
being dropped; a file that does not read keeps the secrets in use; refusals are counted by
cause and logged without the secret."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from cluster.store.client import Store
from cluster.store.records import IkeSaRecord
from keyd.client import ExchangeTimeout, IkeClient

from .conftest import GATEWAY_ID, PSK, KeydInstance, KeydSetup


def client(k: KeydInstance, identity: str, psk: bytes, local_ip: str) -> IkeClient:
    return IkeClient.psk(psk, identity, GATEWAY_ID, local_ip, ("127.0.0.1", k.ike_port),
                         k.natt_port)


def write_secrets(path: Path, alice: str, mode: int = 0o600) -> None:
    path.write_text(f'[[psk]]\nid = "alice@clients.test"\nsecret = "{alice}"\n')
    path.chmod(mode)


def hup_and_wait(k: KeydInstance, result: str, count: float) -> None:
    os.kill(k.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while k.metric("keyd_secrets_reloads_total", result=result) < count:
        assert time.monotonic() < deadline, f"no {result} reload counted"
        time.sleep(0.1)


def test_psk_by_identity_reloaded_on_sighup(keyd_setup: KeydSetup, store: Store,
                                           tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.toml"
    write_secrets(secrets, "alice-one")
    k = keyd_setup.start("keyd-1", extra=f'secrets_file = "{secrets}"')
    # psk_file stays the PSK of any identity the secrets file does not name
    with client(k, "bob@clients.test", PSK, "127.0.0.2") as first:
        est = first.connect()
        with client(k, "alice@clients.test", b"alice-one", "127.0.0.3") as alice:
            alice.connect()
        # alice's identity with the PSK every other identity has: not hers
        with client(k, "alice@clients.test", PSK, "127.0.0.4") as wrong, \
                pytest.raises(ExchangeTimeout):
            wrong.connect(timeout_s=10)
        assert k.metric("keyd_auth_failures_total", reason="psk_mismatch") == 1

        write_secrets(secrets, "alice-two")
        hup_and_wait(k, "ok", 1)
        with client(k, "alice@clients.test", b"alice-one", "127.0.0.5") as old, \
                pytest.raises(ExchangeTimeout):
            old.connect(timeout_s=10)
        assert k.metric("keyd_auth_failures_total", reason="psk_mismatch") == 2
        with client(k, "alice@clients.test", b"alice-two", "127.0.0.6") as new:
            new.connect()

        # a file that does not read: logged, counted, the secrets in use stay
        write_secrets(secrets, "alice-three", mode=0o644)
        hup_and_wait(k, "failed", 1)
        with client(k, "alice@clients.test", b"alice-two", "127.0.0.7") as again:
            again.connect()

        # the IKE SA made before any reload lives on, in keyd and in etcd (alice's went as
        # each new one of hers said INITIAL_CONTACT)
        first.liveness(timeout_s=10)
        assert store.get(IkeSaRecord, est.ike_sa_id) is not None
    log = k.log.read_text()
    assert "secrets reloaded" in log and "secrets not reloaded" in log
    assert "cause=psk_mismatch" in log
    for secret in ("alice-one", "alice-two", "alice-three"):
        assert secret not in log
    assert k.proc.poll() is None
