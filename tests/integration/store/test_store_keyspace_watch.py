"""One watch over several kinds of the cluster: one revision order, resume, compaction,
malformed values and etcd restarts, on a real etcd."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cluster.procs import EtcdServer
from cluster.store import (
    Assignment,
    BadKey,
    DataKey,
    IkeSaRecord,
    Keyspace,
    KeyspaceWatcher,
    NodeRecord,
    PoolLease,
    PublicView,
    RecordDeleted,
    RecordPut,
    Store,
    WatchDisconnected,
    WatchEvent,
    WatchProgress,
    WatchResynced,
)
from cluster.store.watch import wait_for

Factory = Callable[..., Any]
TIMEOUT_S = 20.0
IKE_ID = "11" * 8 + "22" * 8


class Collector:
    def __init__(self) -> None:
        self.events: list[WatchEvent] = []
        self.lock = threading.Lock()

    def __call__(self, event: WatchEvent) -> None:
        with self.lock:
            self.events.append(event)

    def of(self, *kinds: type) -> list[Any]:
        with self.lock:
            return [e for e in self.events if isinstance(e, kinds)]

    def changes(self) -> list[tuple[str, str, str]]:
        return [("put" if isinstance(e, RecordPut) else "del", e.kind, e.name)
                for e in self.of(RecordPut, RecordDeleted)]

    def progress(self) -> int:
        done = self.of(WatchProgress)
        return done[-1].revision if done else 0


def node(node_id: str, state: str = "ready") -> NodeRecord:
    return NodeRecord(node_id, "10.30.0.11", 100, state, 4501, "0.1", 0.0)  # type: ignore[arg-type]


def assign(node_id: str, epoch: int = 1) -> Assignment:
    return Assignment(IKE_ID, node_id, epoch, "active", None, time.time())


def test_kinds_in_one_revision_order(store: Store, child_sa: Factory, ike_sa: Factory) -> None:
    c = Collector()
    w = store.watch_keyspace(c, kinds=["nodes", "assign", "ike", "sa"])
    try:
        assert wait_for(lambda: bool(c.of(WatchResynced)), TIMEOUT_S)
        assert c.of(WatchResynced)[0].reason == "initial"
        store.put(node("n1"))
        store.put(ike_sa())
        store.put(assign("n1"))
        store.put(PoolLease("10.99.0.7", IKE_ID, "alice@example.net", "keyd-1", 0.0))
        store.put(assign("n2", 2))
        store.delete(IkeSaRecord, IKE_ID)
        last = store.put(child_sa(0xB1000001))
        assert wait_for(lambda: c.progress() >= last, TIMEOUT_S)
        assert c.changes() == [("put", "nodes", "n1"), ("put", "ike", IKE_ID),
                               ("put", "assign", IKE_ID), ("put", "assign", IKE_ID),
                               ("del", "ike", IKE_ID), ("put", "sa", "b1000001")]
        revisions = [e.revision for e in c.of(RecordPut, RecordDeleted)]
        assert revisions == sorted(revisions) and len(set(revisions)) == len(revisions)
        assert c.of(RecordPut)[-1].record.enc_key_in      # opened with the data key
        # a change of an unwatched kind only moves the progress
        pool_rev = store.put(PoolLease("10.99.0.8", IKE_ID, "bob@example.net", "keyd-1", 0.0))
        assert wait_for(lambda: c.progress() >= pool_rev, TIMEOUT_S)
        assert len(c.changes()) == 6
        assert w.last_revision >= pool_rev
    finally:
        w.stop()


def test_initial_read_of_several_kinds_is_one_revision(store: Store, child_sa: Factory) -> None:
    store.put(node("n1"))
    store.put(child_sa(0xB2000001))
    store.put(PoolLease("10.99.0.9", IKE_ID, "carol@example.net", "keyd-1", 0.0))
    c = Collector()
    w = KeyspaceWatcher(store, c, kinds=["sa", "nodes"])
    w.start()
    try:
        assert wait_for(lambda: bool(c.of(WatchResynced)), TIMEOUT_S)
        resync = c.of(WatchResynced)[0]
        assert sorted(c.changes()) == [("put", "nodes", "n1"), ("put", "sa", "b2000001")]
        assert all(e.resync for e in c.of(RecordPut))
        assert {k.rsplit("/", 2)[1] for k in resync.keys} == {"nodes", "sa"}
        assert c.progress() == resync.revision
    finally:
        w.stop()


def test_every_kind_by_default_and_unknown_kinds_refused(store: Store) -> None:
    with pytest.raises(BadKey):
        KeyspaceWatcher(store, lambda e: None, kinds=["nodes", "bogus"])
    c = Collector()
    w = store.watch_keyspace(c)
    try:
        assert wait_for(lambda: bool(c.of(WatchResynced)), TIMEOUT_S)
        store.raw_put(store.keyspace.root + "leader", b"not a record")   # no kind: ignored
        rev = store.put(PoolLease("10.99.0.10", IKE_ID, "dave@example.net", "keyd-1", 0.0))
        assert wait_for(lambda: c.progress() >= rev, TIMEOUT_S)
        assert c.changes() == [("put", "pool", "10.99.0.10")]
        assert w.malformed == 0
    finally:
        w.stop()


def test_malformed_and_wrong_key_values_are_skipped_and_counted(
        store: Store, keyspace: Keyspace, etcd_endpoint: str, child_sa: Factory) -> None:
    other = Store([etcd_endpoint], keyspace, DataKey(bytes(32), "another key"))
    c = Collector()
    w = store.watch_keyspace(c, kinds=["sa", "nodes"], start_revision=store.revision() + 1)
    try:
        store.raw_put(store.keyspace.node("n9"), b"{not json")
        other.put(child_sa(0xB3000001))
        rev = store.put(node("n1"))
        assert wait_for(lambda: c.progress() >= rev, TIMEOUT_S)
        assert c.changes() == [("put", "nodes", "n1")]
        assert w.malformed == 2
        assert not c.of(WatchResynced)              # resumed: no initial read
    finally:
        w.stop()
        other.close()


def test_stopped_across_compaction_delivers_current_state(store: Store,
                                                         child_sa: Factory) -> None:
    store.put(node("n1"))
    store.put(node("n2"))
    store.put(child_sa(0xB4000001))
    c = Collector()
    w = store.watch_keyspace(c, kinds=["nodes", "sa"])
    assert wait_for(lambda: bool(c.of(WatchResynced)), TIMEOUT_S)
    w.stop()
    store.delete(NodeRecord, "n1")
    store.put(node("n2", "draining"))
    store.put(child_sa(0xB4000002))
    store.put(PoolLease("10.99.0.11", IKE_ID, "erin@example.net", "keyd-1", 0.0))
    head = store.revision()
    store.raw.compact(head)
    c.events.clear()
    w.start()
    try:
        assert wait_for(lambda: bool(c.of(WatchResynced)), TIMEOUT_S)
        resync = c.of(WatchResynced)[0]
        assert resync.reason == "compacted" and resync.revision >= head
        assert sorted(c.changes()) == [("del", "nodes", "n1"), ("put", "nodes", "n2"),
                                       ("put", "sa", "b4000001"), ("put", "sa", "b4000002")]
        assert all(e.resync for e in c.of(RecordPut, RecordDeleted))
        n2 = next(e for e in c.of(RecordPut) if e.name == "n2")
        assert n2.record.state == "draining"
        rev = store.put(node("n3"))
        assert wait_for(lambda: ("put", "nodes", "n3") in c.changes(), TIMEOUT_S)
        assert not next(e for e in c.of(RecordPut) if e.name == "n3").resync
        assert wait_for(lambda: c.progress() >= rev, TIMEOUT_S)
    finally:
        w.stop()


def test_public_view_watches_sealed_kinds(etcd_endpoint: str, store: Store,
                                          child_sa: Factory) -> None:
    public = Store([etcd_endpoint], store.keyspace, PublicView())
    c = Collector()
    w = public.watch_keyspace(c, kinds=["sa"], start_revision=store.revision() + 1)
    try:
        sa = child_sa(0xB5000001)
        store.put(sa)
        assert wait_for(lambda: bool(c.of(RecordPut)), TIMEOUT_S)
        got = c.of(RecordPut)[0].record
        assert got.identity == sa.identity and got.enc_key_in == b""
        with pytest.raises(ValueError, match="no data key"):
            public.put(child_sa(0xB5000002))
    finally:
        w.stop()
        public.close()


def test_survives_etcd_restart(tmp_path: Path, keyspace: Keyspace, data_key: DataKey) -> None:
    server = EtcdServer(tmp_path / "etcd")
    server.start()
    store = Store([server.endpoint], keyspace, data_key, timeout_s=2.0)
    c = Collector()
    w = store.watch_keyspace(c, kinds=["nodes", "assign"], start_revision=None)
    try:
        assert wait_for(lambda: bool(c.of(WatchResynced)), TIMEOUT_S)
        store.put(node("n1"))
        assert wait_for(lambda: len(c.changes()) == 1, TIMEOUT_S)
        server.stop()
        assert wait_for(lambda: bool(c.of(WatchDisconnected)), TIMEOUT_S)
        server.start()
        store.close()
        store = Store([server.endpoint], keyspace, data_key, timeout_s=2.0)
        store.put(assign("n1"))
        store.put(node("n2"))
        assert wait_for(lambda: len(c.changes()) == 3, 60.0)
        assert c.changes()[1:] == [("put", "assign", IKE_ID), ("put", "nodes", "n2")]
        assert len(c.of(WatchResynced)) == 1          # resumed, not re-read
    finally:
        w.stop()
        store.close()
        server.stop()
