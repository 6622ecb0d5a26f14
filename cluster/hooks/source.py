"""The keyspace as one ordered stream of changes for the deriver.

Hooks need changes of different kinds in the order they happened: a client that moves and
then leaves must not be reported as leaving and then moving (a hook that announces routes
would re-add a dead client's route). So this follows the store's `KeyspaceWatcher` over the
kinds the deriver uses: one etcd watch on the cluster root, in revision order, other kinds
skipped before decoding, with the store's reconnect, resume and compaction handling. After a
compaction the watcher re-reads the watched kinds at one revision; that snapshot is handed
over as a resync, so nothing is skipped silently.

`read_at()` reads the watched kinds as they were at a past revision (the store's paged reads
pinned to that revision), so a restarted runner starts from exactly the state it had
delivered up to.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from cluster.hooks.derive import WATCHED_KINDS, Change
from cluster.store.client import Store
from cluster.store.errors import CompactedError
from cluster.store.keyspace import BadKey
from cluster.store.records import RECORD_TYPES, MalformedRecord
from cluster.store.seal import WrongDataKey
from cluster.store.watch import (
    MALFORMED,
    KeyspaceWatcher,
    RecordDeleted,
    RecordPut,
    WatchDisconnected,
    WatchEvent,
    WatchProgress,
    WatchResynced,
)

log = logging.getLogger("cluster.hooks")

HistoryCompacted = CompactedError
"""The revision asked for is older than etcd's compaction point (the store's error)."""


def change_of(store: Store, key: str, value: bytes | None, revision: int) -> Change | None:
    """The deriver's Change for a key (value None: a delete), or None when the key is not a
    watched kind or its value does not decode (logged and counted)."""
    try:
        kind, name = store.keyspace.split(key)
    except BadKey:
        return None
    if kind not in WATCHED_KINDS:
        return None
    if value is None:
        return Change(kind, name, None, revision)
    try:
        record = store.decode(RECORD_TYPES[kind], value, key)
    except (MalformedRecord, WrongDataKey, BadKey) as exc:
        MALFORMED.labels(kind).inc()
        log.warning("skipped %s", exc)
        return None
    return Change(kind, name, record, revision)


def read_at(store: Store, revision: int | None = None) -> tuple[list[Change], int]:
    """Every watched record as of `revision` (None: now), read in pages pinned to one
    revision, and that revision. HistoryCompacted if etcd no longer has it."""
    kvs, revision = store.scan_many(
        [store.keyspace.kind_prefix(kind) for kind in WATCHED_KINDS], revision=revision)
    changes: list[Change] = []
    for kv in kvs:
        change = change_of(store, kv.key.decode("utf-8", "replace"), kv.value,
                           int(kv.mod_revision))
        if change is not None:
            changes.append(change)
    return changes, revision


class KeyspaceStream:
    """The watched kinds from `start_revision` on, on the watcher's own thread.

    Callbacks (on that thread): `on_change(change)` per change in revision order;
    `on_progress(revision)` when every change up to `revision` was handed over;
    `on_resync(snapshot, revision)` after history was compacted away: the watched state at
    `revision`, to be compared with what the consumer holds.
    """

    def __init__(self, store: Store, start_revision: int, on_change: Callable[[Change], None],
                 on_progress: Callable[[int], None],
                 on_resync: Callable[[list[Change], int], None],
                 backoff_max_s: float = 5.0) -> None:
        self._on_change = on_change
        self._on_progress = on_progress
        self._on_resync = on_resync
        self._snapshot: list[Change] = []
        self._watcher = KeyspaceWatcher(store, self._event, WATCHED_KINDS,
                                        start_revision=start_revision,
                                        backoff_max_s=backoff_max_s)

    @property
    def last_revision(self) -> int:
        """The last revision whose changes were handed over."""
        return self._watcher.last_revision

    @property
    def running(self) -> bool:
        """The watch thread is alive (it follows etcd, reconnecting as needed)."""
        return self._watcher.running

    def start(self) -> None:
        self._watcher.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._watcher.stop(timeout_s)

    def _event(self, event: WatchEvent) -> None:
        if isinstance(event, RecordPut | RecordDeleted):
            record = event.record if isinstance(event, RecordPut) else None
            change = Change(event.kind, event.name, record, event.revision)
            if not event.resync:
                self._on_change(change)
            elif record is not None:
                # A resync's deletes are the consumer's to find: it compares what it holds
                # with the snapshot, including what it held before this watch started.
                self._snapshot.append(change)
        elif isinstance(event, WatchResynced):
            snapshot, self._snapshot = self._snapshot, []
            log.warning("history was compacted: re-read the cluster state at revision %d",
                        event.revision)
            self._on_resync(snapshot, event.revision)
        elif isinstance(event, WatchProgress):
            self._on_progress(event.revision)
        elif isinstance(event, WatchDisconnected):
            log.warning("watch interrupted: %s; resuming after revision %d", event.detail,
                        event.last_revision)
