"""Prefix watches with typed events that resume from a revision and survive compaction.

A `PrefixWatcher` runs one thread. It delivers, in revision order, `RecordPut` and
`RecordDeleted` events for one record kind to a callback. It remembers the last revision it
delivered; when the stream breaks (etcd restart, network) it reconnects with backoff and
resumes from that revision + 1. When etcd has compacted that revision away it re-reads the
prefix at head, delivers the current state (a put for every key, a delete for every key it
had delivered that is gone), then `WatchResynced`, and continues from the read's revision + 1:
nothing is skipped silently. Values that do not decode are logged, counted and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import etcd3.events
import etcd3.exceptions as etcd_exc
from prometheus_client import Counter

from .errors import StoreError, translate
from .keyspace import BadKey
from .records import MalformedRecord, Record
from .seal import WrongDataKey

if TYPE_CHECKING:
    from .client import Store

log = logging.getLogger(__name__)
E = TypeVar("E")

MALFORMED = Counter("ipsec_cluster_store_malformed_records",
                    "Stored values skipped because they did not decode", ["kind"])
RESYNCS = Counter("ipsec_cluster_store_watch_resyncs",
                  "Watch re-reads of a prefix after compaction", ["kind"])
RECONNECTS = Counter("ipsec_cluster_store_watch_reconnects",
                     "Watch streams re-established after a failure", ["kind"])


class WatchEvent:
    """Marker base of the events a PrefixWatcher delivers."""


@dataclass(frozen=True, slots=True)
class RecordPut(WatchEvent):
    key: str            # full etcd key
    name: str           # last key component (id, SPI hex, IKE SA id, IP, name)
    record: Record      # the decoded record
    revision: int       # the put's mod_revision


@dataclass(frozen=True, slots=True)
class RecordDeleted(WatchEvent):
    key: str
    name: str
    revision: int       # the delete's revision (or the re-read's, after a resync)


@dataclass(frozen=True, slots=True)
class WatchResynced(WatchEvent):
    """The current state was re-read at `revision` and delivered in full before this event."""

    revision: int
    reason: str         # "initial" or "compacted"
    keys: frozenset[str]  # every key present at `revision`: anything else held is stale


@dataclass(frozen=True, slots=True)
class WatchDisconnected(WatchEvent):
    """The stream broke; the watcher keeps retrying and resumes where it stopped."""

    detail: str
    last_revision: int


class PrefixWatcher:
    """Watch every record of one kind. `start_revision=None` starts with a full read of the
    current state (then `WatchResynced(reason="initial")`); an int resumes from it."""

    def __init__(self, store: Store, cls: type[Record], on_event: Callable[[WatchEvent], None],
                 start_revision: int | None = None, backoff_max_s: float = 5.0) -> None:
        self._parent = store
        self._store: Store | None = None
        self.cls = cls
        self.prefix = store.keyspace.kind_prefix(cls.KIND)
        self._on_event = on_event
        self._need_read = start_revision is None
        self.last_revision = 0 if start_revision is None else start_revision - 1
        self.malformed = 0
        self._known: set[str] = set()
        self._backoff_max_s = backoff_max_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start (or, after stop(), resume from last_revision + 1) on a fresh connection."""
        if self.running:
            return
        self._stop.clear()
        self._store = self._parent.clone()
        self._thread = threading.Thread(target=self._run, args=(self._store,),
                                        name=f"watch-{self.cls.KIND}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop delivering; last_revision stays, so start() resumes where this stopped."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._store is not None:
            with contextlib.suppress(StoreError):
                self._store.close()
            self._store = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the worker ------------------------------------------------------------------------
    def _emit(self, event: WatchEvent) -> None:
        try:
            self._on_event(event)
        except Exception as exc:  # a consumer bug must not kill the watch
            log.error("watch %s: event handler failed on %s: %s", self.prefix,
                      type(event).__name__, exc)

    def _run(self, store: Store) -> None:
        backoff = 0.1
        disconnected = False
        while not self._stop.is_set():
            try:
                if self._need_read:
                    self._read_all(store, "initial" if self.last_revision == 0 else "compacted")
                    self._need_read = False
                self._stream(store)
                return
            except etcd_exc.RevisionCompactedError as exc:
                log.warning("watch %s: revision %d compacted (oldest %s): re-reading",
                            self.prefix, self.last_revision + 1, exc.compacted_revision)
                RESYNCS.labels(self.cls.KIND).inc()
                self._need_read = True
            except Exception as exc:
                err = translate(exc, store.endpoint)
                if not disconnected:
                    log.warning("watch %s: %s; retrying", self.prefix, err)
                    self._emit(WatchDisconnected(str(err), self.last_revision))
                disconnected = True
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self._backoff_max_s)
                continue
            if disconnected:
                RECONNECTS.labels(self.cls.KIND).inc()
                disconnected = False
            backoff = 0.1

    def _read_all(self, store: Store, reason: str) -> None:
        kvs, revision = store.scan(self.prefix)
        present: set[str] = set()
        for kv in kvs:
            key = kv.key.decode("utf-8", "replace")
            present.add(key)
            self._put(store, key, kv.value, kv.mod_revision)
        for key in sorted(self._known - present):
            self._known.discard(key)
            self._emit(RecordDeleted(key, key[len(self.prefix):], revision))
        self.last_revision = revision
        self._emit(WatchResynced(revision, reason, frozenset(present)))

    def _stream(self, store: Store) -> None:
        client = store.raw
        inbox: queue.Queue[Any] = queue.Queue()
        watch_id = client.add_watch_prefix_callback(
            self.prefix, inbox.put, start_revision=self.last_revision + 1)
        try:
            while not self._stop.is_set():
                try:
                    item = inbox.get(timeout=0.2)
                except queue.Empty:
                    continue
                if isinstance(item, BaseException):
                    raise item
                if item is None:
                    raise StoreError("watch stream closed")
                for ev in item.events:
                    self._event(store, ev)
        finally:
            with contextlib.suppress(Exception):  # the stream may already be gone
                client.cancel_watch(watch_id)

    def _event(self, store: Store, ev: Any) -> None:
        key = ev.key.decode("utf-8", "replace")
        if isinstance(ev, etcd3.events.DeleteEvent):
            self._known.discard(key)
            self.last_revision = int(ev.mod_revision)
            self._emit(RecordDeleted(key, key[len(self.prefix):], int(ev.mod_revision)))
        else:
            self._put(store, key, ev.value, int(ev.mod_revision))
            self.last_revision = int(ev.mod_revision)

    def _put(self, store: Store, key: str, value: bytes, revision: int) -> None:
        try:
            store.keyspace.split(key)
            record = store.decode(self.cls, value, key)
        except (MalformedRecord, WrongDataKey, BadKey) as exc:
            self.malformed += 1
            MALFORMED.labels(self.cls.KIND).inc()
            log.warning("watch %s: skipped %s", self.prefix, exc)
            return
        self._known.add(key)
        self._emit(RecordPut(key, key[len(self.prefix):], record, int(revision)))


def asyncio_sink(loop: asyncio.AbstractEventLoop,
                 q: asyncio.Queue[WatchEvent]) -> Callable[[WatchEvent], None]:
    """An on_event callback that hands events to an asyncio queue of `loop`."""
    def sink(event: WatchEvent) -> None:
        loop.call_soon_threadsafe(q.put_nowait, event)
    return sink


def in_loop(loop: asyncio.AbstractEventLoop,
            callback: Callable[[E], None]) -> Callable[[E], None]:
    """Wrap a callback so the store's threads (watch, membership) run it on `loop`:
    `Membership(store, rec, ttl, in_loop(loop, self.on_lease_lost))`."""
    def call(event: E) -> None:
        loop.call_soon_threadsafe(callback, event)
    return call


def wait_for(pred: Callable[[], bool], timeout_s: float, step_s: float = 0.02) -> bool:
    """Poll `pred` until true or timeout (tests and tools)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step_s)
    return pred()
