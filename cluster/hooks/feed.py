"""Cluster events from live etcd: one ordered keyspace stream feeding the deriver.

`ClusterFeed` primes the deriver with the watched kinds as they were at the revision delivery
resumes from, then follows the keyspace from the next revision. Every change becomes zero or
more HookEvents, handed to `on_events(events)` in revision order; `on_progress(revision)` says
that everything up to `revision` has been handed over. After a compaction the keyspace is
re-read: keys the deriver holds but the re-read lacks become deletes, the rest become puts,
so nothing is skipped silently.

Used by `cluster-hooks` (which delivers and persists progress) and `clusterctl watch`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from cluster.hooks.derive import WATCHED_KINDS, Change, EventDeriver
from cluster.hooks.event import HookEvent
from cluster.hooks.source import HistoryCompacted, KeyspaceStream, read_at
from cluster.store.client import Store

log = logging.getLogger("cluster.hooks")


class ClusterFeed:
    """Derive cluster events from the keyspace, from a given revision on."""

    def __init__(self, store: Store, on_events: Callable[[list[HookEvent]], None],
                 on_progress: Callable[[int], None] | None = None) -> None:
        self.store = store
        self.deriver = EventDeriver(store.keyspace.cluster)
        self._on_events = on_events
        self._on_progress = on_progress or (lambda revision: None)
        self.lock = threading.Lock()
        """Held while a change is applied and its events handed over."""
        self.stream: KeyspaceStream | None = None

    def start(self, delivered: int | None = None,
              fallback: Callable[[], tuple[int, list[Change]] | None] | None = None) -> int:
        """Start following. `delivered` is the revision already delivered (None: now, with no
        events for what already exists). When etcd no longer has that revision, `fallback`
        may supply a saved state (revision, puts) at or before it. Returns the revision it
        started after."""
        try:
            snapshot, base = read_at(self.store, delivered)
        except HistoryCompacted:
            assert delivered is not None
            saved = fallback() if fallback else None
            if saved is not None and saved[0] <= delivered:
                log.warning("revision %d is compacted: starting from the state saved at "
                            "revision %d; events since then may repeat", delivered, saved[0])
                snapshot = saved[1]
            else:
                log.warning("revision %d is compacted and no saved state: clients and nodes "
                            "that left meanwhile go unreported; others may repeat", delivered)
                snapshot = []
            base = delivered
        self.deriver.prime(snapshot)
        self.stream = KeyspaceStream(self.store, base + 1, self._change, self._progress,
                                     self._resync)
        self.stream.start()
        return base

    @property
    def running(self) -> bool:
        """Started and its watch thread is alive."""
        return self.stream is not None and self.stream.running

    def stop(self) -> None:
        if self.stream is not None:
            self.stream.stop()

    def _change(self, change: Change) -> None:
        with self.lock:
            self._on_events(self.deriver.apply(change))

    def _progress(self, revision: int) -> None:
        self._on_progress(revision)

    def _resync(self, snapshot: list[Change], revision: int) -> None:
        with self.lock:
            events: list[HookEvent] = []
            for change in snapshot:
                events += self.deriver.apply(Change(change.kind, change.name, change.record,
                                                    revision))
            present = {(c.kind, c.name) for c in snapshot}
            # Deletes last, so a client-down still finds the client's assignment.
            for kind in WATCHED_KINDS:
                for name in sorted(self.deriver.names(kind)):
                    if (kind, name) not in present:
                        events += self.deriver.apply(Change(kind, name, None, revision))
            self._on_events(events)
        self._on_progress(revision)
