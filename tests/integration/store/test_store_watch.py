"""Prefix watches on a real etcd: malformed values, compaction, etcd restarts."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY

from cluster.procs import EtcdServer
from cluster.store import (
    ChildSaRecord,
    DataKey,
    Keyspace,
    Policy,
    RecordDeleted,
    RecordMalformed,
    RecordPut,
    Store,
    WatchDisconnected,
    WatchEvent,
    WatchResynced,
)
from cluster.store.watch import wait_for

Factory = Callable[..., Any]
TIMEOUT_S = 20.0


class Collector:
    def __init__(self) -> None:
        self.events: list[WatchEvent] = []
        self.lock = threading.Lock()

    def __call__(self, event: WatchEvent) -> None:
        with self.lock:
            self.events.append(event)

    def of(self, kind: type) -> list[Any]:
        with self.lock:
            return [e for e in self.events if isinstance(e, kind)]

    def put_spis(self) -> list[int]:
        return [e.record.spi_in for e in self.of(RecordPut)]


def malformed_count(kind: str) -> float:
    return REGISTRY.get_sample_value("ipsec_cluster_store_malformed_records_total",
                                     {"kind": kind}) or 0.0


def test_initial_state_then_live_events(store: Store, child_sa: Factory) -> None:
    store.put(child_sa(0xE0000001))
    c = Collector()
    w = store.watch(ChildSaRecord, c)
    try:
        assert wait_for(lambda: c.of(WatchResynced), TIMEOUT_S)
        assert c.put_spis() == [0xE0000001]
        assert c.of(WatchResynced)[0].reason == "initial"
        rev = store.put(child_sa(0xE0000002))
        store.delete(ChildSaRecord, 0xE0000001)
        assert wait_for(lambda: c.of(RecordDeleted), TIMEOUT_S)
        assert c.put_spis() == [0xE0000001, 0xE0000002]
        assert c.of(RecordPut)[1].revision == rev
        assert c.of(RecordDeleted)[0].name == "e0000001"
        assert w.last_revision == c.of(RecordDeleted)[0].revision
    finally:
        w.stop()


def test_malformed_value_skipped_with_warning_and_counter(
        store: Store, child_sa: Factory, caplog: Any) -> None:
    c = Collector()
    w = store.watch(ChildSaRecord, c)
    before = malformed_count("sa")
    try:
        assert wait_for(lambda: c.of(WatchResynced), TIMEOUT_S)
        store.raw_put(store.keyspace.sa(0xE1000001), b'{"v":1,"spi_in":"junk"}')
        store.raw_put(store.keyspace.sa(0xE1000002), b"\xff\x00 not json")
        store.put(child_sa(0xE1000003))
        assert wait_for(lambda: c.put_spis() == [0xE1000003], TIMEOUT_S)
        assert w.malformed == 2
        assert malformed_count("sa") == before + 2
        assert any("sa/e1000001" in r.getMessage() and r.levelname == "WARNING"
                   for r in caplog.records)
        store.put(child_sa(0xE1000004))  # and the watcher keeps going
        assert wait_for(lambda: c.put_spis() == [0xE1000003, 0xE1000004], TIMEOUT_S)
    finally:
        w.stop()


def test_malformed_values_reported_to_a_watcher_that_asks(store: Store) -> None:
    """A traffic policy's consumer must not keep using an older version of a key whose value
    went bad: `report_malformed` tells it, in revision order, at the initial read too."""
    store.raw_put(store.keyspace.policy("old-bad"), b'{"v":1,"name":"old-bad"}')
    c = Collector()
    quiet = Collector()
    w = store.watch(Policy, c, report_malformed=True)
    w_quiet = store.watch(Policy, quiet)
    try:
        assert wait_for(lambda: c.of(WatchResynced) and quiet.of(WatchResynced), TIMEOUT_S)
        first = c.of(RecordMalformed)
        assert [(e.name, e.kind, e.resync) for e in first] == [("old-bad", "policy", True)]
        store.put(Policy("guest", ["*"], "guest", ["10.20.0.53/32 udp/53"]))
        rev = store.raw_put(store.keyspace.policy("guest"),
                            b'{"v":1,"name":"guest","identities":[],"mode":"guest",'
                            b'"allowed":["tcp/99999"]}')
        store.delete(Policy, "guest")
        assert wait_for(lambda: c.of(RecordDeleted), TIMEOUT_S)
        bad = c.of(RecordMalformed)[-1]
        assert bad.name == "guest" and not bad.resync and "99999" in bad.reason
        assert bad.revision == rev
        order = [type(e).__name__ for e in c.events if not isinstance(e, WatchResynced)]
        assert order == ["RecordMalformed", "RecordPut", "RecordMalformed", "RecordDeleted"]
        assert wait_for(lambda: quiet.of(RecordDeleted), TIMEOUT_S)
        assert not quiet.of(RecordMalformed)  # others are not told
    finally:
        w.stop()
        w_quiet.stop()


def test_sa_sealed_with_another_key_is_skipped_not_fatal(
        store: Store, etcd_endpoint: str, child_sa: Factory, tmp_path: Path) -> None:
    import os
    other = Store([etcd_endpoint], store.keyspace, DataKey(os.urandom(32), "other"))
    c = Collector()
    w = store.watch(ChildSaRecord, c)
    try:
        assert wait_for(lambda: c.of(WatchResynced), TIMEOUT_S)
        other.put(child_sa(0xE2000001))
        store.put(child_sa(0xE2000002))
        assert wait_for(lambda: c.put_spis() == [0xE2000002], TIMEOUT_S)
        assert w.malformed == 1
    finally:
        w.stop()
        other.close()


def test_watcher_stopped_across_compaction_delivers_current_state(
        store: Store, child_sa: Factory) -> None:
    for i in range(5):
        store.put(child_sa(0xE3000000 + i))
    c = Collector()
    w = store.watch(ChildSaRecord, c)
    assert wait_for(lambda: len(c.put_spis()) == 5 and c.of(WatchResynced), TIMEOUT_S)
    w.stop()
    stopped_at = w.last_revision
    # while it is stopped: changes, deletes, new keys — then compaction past them all
    store.delete(ChildSaRecord, 0xE3000000)
    store.delete(ChildSaRecord, 0xE3000001)
    store.put(child_sa(0xE3000002, peer_port=5000))
    for i in range(10, 15):
        store.put(child_sa(0xE3000000 + i))
    head = store.revision()
    store.raw.compact(head)
    c.events.clear()
    w.start()
    try:
        assert wait_for(lambda: len(c.of(WatchResynced)) == 1, TIMEOUT_S)
        resync = c.of(WatchResynced)[0]
        assert resync.reason == "compacted" and resync.revision >= head
        expected = {0xE3000002, 0xE3000003, 0xE3000004} | {0xE3000000 + i for i in range(10, 15)}
        assert set(c.put_spis()) == expected
        assert {e.name for e in c.of(RecordDeleted)} == {"e3000000", "e3000001"}
        assert {k.rsplit("/", 1)[1] for k in resync.keys} == {f"{s:08x}" for s in expected}
        changed = [e for e in c.of(RecordPut) if e.record.spi_in == 0xE3000002]
        assert changed[0].record.peer_port == 5000
        assert w.last_revision >= head > stopped_at
        # and it continues live after the re-read
        store.put(child_sa(0xE3000020))
        assert wait_for(lambda: 0xE3000020 in c.put_spis(), TIMEOUT_S)
    finally:
        w.stop()


def test_resume_from_revision_without_compaction(store: Store, child_sa: Factory) -> None:
    first = store.put(child_sa(0xE4000001))
    store.put(child_sa(0xE4000002))
    c = Collector()
    w = store.watch(ChildSaRecord, c, start_revision=first + 1)
    try:
        assert wait_for(lambda: c.put_spis() == [0xE4000002], TIMEOUT_S)
        assert not c.of(WatchResynced)
    finally:
        w.stop()


def test_watch_survives_etcd_restart(tmp_path: Path, keyspace: Keyspace, data_key: DataKey,
                                     child_sa: Factory) -> None:
    server = EtcdServer(tmp_path / "etcd")
    server.start()
    store = Store([server.endpoint], keyspace, data_key, timeout_s=2.0)
    c = Collector()
    w = store.watch(ChildSaRecord, c)
    try:
        assert wait_for(lambda: c.of(WatchResynced), TIMEOUT_S)
        store.put(child_sa(0xE5000001))
        assert wait_for(lambda: c.put_spis() == [0xE5000001], TIMEOUT_S)
        server.stop()
        assert wait_for(lambda: c.of(WatchDisconnected), TIMEOUT_S)
        server.start()
        writer = Store([server.endpoint], keyspace, data_key, timeout_s=2.0)
        try:
            writer.put(child_sa(0xE5000002))
        finally:
            writer.close()
        assert wait_for(lambda: c.put_spis() == [0xE5000001, 0xE5000002], 30.0)
        assert len(c.of(WatchResynced)) == 1  # resumed, not re-read
    finally:
        w.stop()
        store.close()
        server.stop()
