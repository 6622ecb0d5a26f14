"""A store whose etcd was gone for a while answers again soon after etcd is back: gRPC's
reconnection back-off is capped (cluster.store.client.RECONNECT_BACKOFF_MAX_MS)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cluster.procs import EtcdServer
from cluster.store import Keyspace, Store
from cluster.store.client import RECONNECT_BACKOFF_MAX_MS
from cluster.store.errors import StoreError
from cluster.store.records import KeydRecord

pytestmark = pytest.mark.integration

#: long enough for gRPC's own back-off (1 s, x1.6 a try, up to 120 s) to reach ~10 s
OUTAGE_S = 20.0


def test_store_answers_within_a_second_or_two_after_a_long_outage(tmp_path: Path) -> None:
    etcd = EtcdServer(tmp_path / "etcd")
    etcd.start()
    try:
        store = Store([etcd.endpoint], Keyspace("reconnect"), timeout_s=1.0)
        assert store.get(KeydRecord, "k1") is None
        etcd.stop()
        gone = time.monotonic()
        while time.monotonic() - gone < OUTAGE_S:
            with pytest.raises(StoreError):
                store.get(KeydRecord, "k1")   # a component asking now and then meanwhile
            time.sleep(1.0)
        etcd.start()
        back = time.monotonic()
        while True:
            try:
                assert store.get(KeydRecord, "k1") is None
                break
            except StoreError:
                time.sleep(0.05)
        waited = time.monotonic() - back
        # the cap plus gRPC's jitter and a loaded machine's slack; uncapped it is ~6 s here
        assert waited < 3 * RECONNECT_BACKOFF_MAX_MS / 1000, f"answered {waited:.1f} s late"
        store.close()
    finally:
        etcd.stop()
