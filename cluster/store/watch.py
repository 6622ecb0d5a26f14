"""Watches with typed events that resume from a revision and survive compaction.

A `PrefixWatcher` (one record kind) or a `KeyspaceWatcher` (several kinds, or all, under the
cluster root, with one etcd watch so that changes of different kinds arrive in the order they
happened) runs one thread. It delivers, in revision order, `RecordPut` and `RecordDeleted`
events to a callback. It remembers the last revision it delivered; when the stream breaks
(etcd restart, network) it reconnects with backoff and resumes from that revision + 1. When
etcd has compacted that revision away it re-reads the watched prefixes at head (all at one
revision), delivers the current state (a put for every key, a delete for every key it had
delivered that is gone, each marked `resync=True`), then `WatchResynced`, and continues from
the read's revision + 1: nothing is skipped silently. Values that do not decode are logged,
counted and skipped. A KeyspaceWatcher also says `WatchProgress(revision)` after each
response: every change up to `revision` has been delivered (including revisions that only
touched kinds it does not watch).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import etcd3.events
from prometheus_client import Counter

from .errors import CompactedError, StoreError, translate, translated
from .keyspace import KINDS, BadKey, Keyspace
from .records import RECORD_TYPES, MalformedRecord, Record
from .seal import WrongDataKey

R = TypeVar("R", bound=Record)


class WatchedStore(Protocol):
    """What a watcher uses of its store. `cluster.store.client.Store` is one; the store
    starts watchers (`Store.watch`), so this module names it by what it uses, not by import."""

    keyspace: Keyspace
    endpoint: str

    @property
    def raw(self) -> Any: ...
    def clone(self) -> WatchedStore: ...
    def close(self) -> None: ...
    def scan_many(self, prefixes: Iterable[str]) -> tuple[list[Any], int]: ...
    def decode(self, cls: type[R], raw: bytes, key: str) -> R: ...

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
    kind: str = ""      # the key kind ("sa", "nodes", ...)
    resync: bool = False  # part of a re-read after compaction (WatchResynced follows)


@dataclass(frozen=True, slots=True)
class RecordDeleted(WatchEvent):
    key: str
    name: str
    revision: int       # the delete's revision (or the re-read's, after a resync)
    kind: str = ""
    resync: bool = False


@dataclass(frozen=True, slots=True)
class RecordMalformed(WatchEvent):
    """A value at `key` did not decode (it was logged and counted). Delivered only to
    watchers started with `report_malformed=True`: a consumer that must not go on using an
    older version of that key (a traffic policy: the node then fails closed)."""

    key: str
    name: str
    revision: int
    kind: str
    reason: str
    resync: bool = False


@dataclass(frozen=True, slots=True)
class WatchProgress(WatchEvent):
    """Every change up to `revision` has been delivered (KeyspaceWatcher only)."""

    revision: int


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


class _Watcher:
    """The worker both watchers share: one etcd prefix watch over `watch_prefix`, events of
    `kinds` only, re-reads of `read_prefixes` at one revision."""

    _label = ""
    _thread_name = "watch"

    def __init__(self, store: WatchedStore, kinds: tuple[str, ...], watch_prefix: str,
                 on_event: Callable[[WatchEvent], None], start_revision: int | None,
                 backoff_max_s: float, progress: bool,
                 report_malformed: bool = False) -> None:
        self._parent = store
        self._report_malformed = report_malformed
        self._store: WatchedStore | None = None
        self.kinds = kinds
        self._kinds = frozenset(kinds)
        self.prefix = watch_prefix
        self._read_prefixes = ([store.keyspace.root] if len(set(kinds)) == len(KINDS)
                               else [store.keyspace.kind_prefix(k) for k in kinds])
        self._on_event = on_event
        self._progress = progress
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
                                        name=self._thread_name, daemon=True)
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

    def _run(self, store: WatchedStore) -> None:
        backoff = 0.1
        disconnected = False
        while not self._stop.is_set():
            try:
                if self._need_read:
                    self._read_all(store, "initial" if self.last_revision == 0 else "compacted")
                    self._need_read = False
                self._stream(store)
                return
            except CompactedError as exc:
                log.warning("watch %s: %s: re-reading", self.prefix, exc)
                RESYNCS.labels(self._label).inc()
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
                RECONNECTS.labels(self._label).inc()
                disconnected = False
            backoff = 0.1

    def _read_all(self, store: WatchedStore, reason: str) -> None:
        kvs, revision = store.scan_many(self._read_prefixes)
        present: set[str] = set()
        for kv in kvs:
            key = kv.key.decode("utf-8", "replace")
            kind = self._kind_of(store, key)
            if kind is None:
                continue
            present.add(key)
            self._put(store, kind, key, kv.value, kv.mod_revision, resync=True)
        for key in sorted(self._known - present):
            self._known.discard(key)
            kind, name = self._split(store, key)
            self._emit(RecordDeleted(key, name, revision, kind, resync=True))
        self.last_revision = revision
        self._emit(WatchResynced(revision, reason, frozenset(present)))
        if self._progress:
            self._emit(WatchProgress(revision))

    def _stream(self, store: WatchedStore) -> None:
        client = store.raw
        inbox: queue.Queue[Any] = queue.Queue()
        with translated(store.endpoint):
            watch_id = client.add_watch_prefix_callback(
                self.prefix, inbox.put, start_revision=self.last_revision + 1)
        try:
            while not self._stop.is_set():
                try:
                    item = inbox.get(timeout=0.2)
                except queue.Empty:
                    continue
                if isinstance(item, BaseException):
                    raise translate(item, store.endpoint, self.last_revision + 1)
                if item is None:
                    raise StoreError("watch stream closed")
                for ev in item.events:
                    self._event(store, ev)
                # etcd never splits one revision across the responses of a prefix watch
                if self._progress and item.events:
                    self._emit(WatchProgress(self.last_revision))
        finally:
            with contextlib.suppress(Exception):  # the stream may already be gone
                client.cancel_watch(watch_id)

    def _split(self, store: WatchedStore, key: str) -> tuple[str, str]:
        try:
            return store.keyspace.split(key)
        except BadKey:
            return "", key[len(self.prefix):]

    def _kind_of(self, store: WatchedStore, key: str) -> str | None:
        """The kind of a watched key, or None for a key of another kind (or no kind)."""
        kind, _ = self._split(store, key)
        if kind in self._kinds:
            return kind
        for k in self.kinds:  # a bad key under a watched kind: counted as malformed
            if key.startswith(store.keyspace.kind_prefix(k)):
                return k
        return None

    def _event(self, store: WatchedStore, ev: Any) -> None:
        key = ev.key.decode("utf-8", "replace")
        revision = int(ev.mod_revision)
        kind = self._kind_of(store, key)
        if kind is not None:
            if isinstance(ev, etcd3.events.DeleteEvent):
                self._known.discard(key)
                self.last_revision = revision
                self._emit(RecordDeleted(key, self._split(store, key)[1], revision, kind))
            else:
                self._put(store, kind, key, ev.value, revision)
        self.last_revision = max(self.last_revision, revision)

    def _put(self, store: WatchedStore, kind: str, key: str, value: bytes, revision: int,
             resync: bool = False) -> None:
        try:
            _, name = store.keyspace.split(key)
            record = store.decode(RECORD_TYPES[kind], value, key)
        except (MalformedRecord, WrongDataKey, BadKey) as exc:
            self.malformed += 1
            MALFORMED.labels(kind).inc()
            log.warning("watch %s: skipped %s", self.prefix, exc)
            if self._report_malformed:
                self._known.add(key)  # a later delete of it is news to the consumer
                self._emit(RecordMalformed(key, self._split(store, key)[1], int(revision),
                                           kind, str(exc), resync))
            return
        self._known.add(key)
        self._emit(RecordPut(key, name, record, int(revision), kind, resync))


class PrefixWatcher(_Watcher):
    """Watch every record of one kind. `start_revision=None` starts with a full read of the
    current state (then `WatchResynced(reason="initial")`); an int resumes from it."""

    def __init__(self, store: WatchedStore, cls: type[Record],
                 on_event: Callable[[WatchEvent], None], start_revision: int | None = None,
                 backoff_max_s: float = 5.0, report_malformed: bool = False) -> None:
        super().__init__(store, (cls.KIND,), store.keyspace.kind_prefix(cls.KIND), on_event,
                         start_revision, backoff_max_s, progress=False,
                         report_malformed=report_malformed)
        self.cls = cls
        self._label = cls.KIND
        self._thread_name = f"watch-{cls.KIND}"


class KeyspaceWatcher(_Watcher):
    """Watch several record kinds (`kinds`, None: every kind) of the cluster with one etcd
    watch on the cluster root, so their changes arrive in one revision order. Keys of other
    kinds are skipped before decoding. `start_revision=None` starts with a full read of the
    watched kinds at one revision (then `WatchResynced(reason="initial")`); an int resumes
    from it. After each response: `WatchProgress`."""

    def __init__(self, store: WatchedStore, on_event: Callable[[WatchEvent], None],
                 kinds: Iterable[str] | None = None, start_revision: int | None = None,
                 backoff_max_s: float = 5.0) -> None:
        chosen = tuple(KINDS if kinds is None else dict.fromkeys(kinds))
        for kind in chosen:
            store.keyspace.kind_prefix(kind)  # BadKey for an unknown kind
        if not chosen:
            raise BadKey("a keyspace watch needs at least one kind")
        super().__init__(store, chosen, store.keyspace.root, on_event, start_revision,
                         backoff_max_s, progress=True)
        self._label = "all" if len(chosen) == len(KINDS) else ",".join(sorted(chosen))
        self._thread_name = "watch-keyspace"


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
