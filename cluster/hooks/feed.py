"""Cluster events from live etcd: watchers per kind feeding one deriver.

`ClusterFeed` primes the deriver with each watched kind as it was at the revision delivery
resumes from, then runs one store PrefixWatcher per kind from the next revision. Every change
becomes zero or more HookEvents, handed to `on_events(kind, events, revision)`; the caller
learns with `on_progress(kind, revision)` that everything of that kind up to `revision` has
been handed over. After a compaction the store re-reads the kind; keys the deriver still
holds but the re-read lacks become deletes here, so nothing is skipped silently.

Used by `cluster-hooks` (which delivers and persists progress) and `clusterctl watch`.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Mapping

from cluster.hooks.derive import WATCHED_KINDS, Change, EventDeriver
from cluster.hooks.event import HookEvent
from cluster.hooks.source import HistoryCompacted, read_at
from cluster.store.client import Store
from cluster.store.keyspace import BadKey
from cluster.store.records import RECORD_TYPES
from cluster.store.watch import (
    PrefixWatcher,
    RecordDeleted,
    RecordPut,
    WatchDisconnected,
    WatchEvent,
    WatchResynced,
)

log = logging.getLogger("cluster.hooks")

EventsCallback = Callable[[str, list[HookEvent], int], None]
ProgressCallback = Callable[[str, int], None]


class ClusterFeed:
    """Derive cluster events from the keyspace, from given per-kind revisions on."""

    def __init__(self, store: Store, on_events: EventsCallback,
                 on_progress: ProgressCallback | None = None) -> None:
        self.store = store
        self.deriver = EventDeriver(store.keyspace.cluster)
        self._on_events = on_events
        self._on_progress = on_progress or (lambda kind, revision: None)
        self._lock = threading.Lock()
        self.watchers: dict[str, PrefixWatcher] = {}

    def start(self, delivered: Mapping[str, int] | None = None) -> dict[str, int]:
        """Start watching. `delivered` maps kind → the revision already delivered (None: start
        from now, with no events for what exists). Returns the revisions started from."""
        head = None
        started: dict[str, int] = {}
        for kind in WATCHED_KINDS:
            base = (delivered or {}).get(kind)
            if base is None:
                head = self.store.revision() if head is None else head
                base = head
            try:
                changes, _ = read_at(self.store, kind, base)
            except HistoryCompacted:
                log.warning("%s: revision %d is compacted: the state delivered up to then is "
                            "gone; events since may repeat", kind, base)
                changes = []
            self.deriver.prime(changes)
            started[kind] = base
        for kind, base in started.items():
            watcher = PrefixWatcher(self.store, RECORD_TYPES[kind],
                                    functools.partial(self._event, kind),
                                    start_revision=base + 1)
            watcher.start()
            self.watchers[kind] = watcher
        return started

    def stop(self) -> None:
        for watcher in self.watchers.values():
            watcher.stop()

    def _event(self, kind: str, event: WatchEvent) -> None:
        with self._lock:
            if isinstance(event, RecordPut):
                change = Change(kind, event.name, event.record, event.revision)
                self._on_events(kind, self.deriver.apply(change), event.revision)
                # Later keys of the same transaction share this revision: only the one
                # before is known to be complete.
                self._on_progress(kind, event.revision - 1)
            elif isinstance(event, RecordDeleted):
                change = Change(kind, event.name, None, event.revision)
                self._on_events(kind, self.deriver.apply(change), event.revision)
                self._on_progress(kind, event.revision - 1)
            elif isinstance(event, WatchResynced):
                self._resynced(kind, event)
            elif isinstance(event, WatchDisconnected):
                log.warning("watch of %s/ interrupted (%s); resuming after revision %d",
                            kind, event.detail, event.last_revision)

    def _resynced(self, kind: str, event: WatchResynced) -> None:
        present = set()
        for key in event.keys:
            try:
                present.add(self.store.keyspace.split(key)[1])
            except BadKey:
                continue
        held = self.deriver.names(kind)
        events: list[HookEvent] = []
        for name in sorted(held - present):
            events += self.deriver.apply(Change(kind, name, None, event.revision))
        self._on_events(kind, events, event.revision)
        self._on_progress(kind, event.revision)
