"""The keyspace as one ordered stream of changes for the deriver.

Hooks need changes of different kinds in the order they happened: a client that moves and
then leaves must not be reported as leaving and then moving (a hook that announces routes
would re-add a dead client's route). So this watches the cluster's whole root with one etcd
watch, in revision order, and skips kinds the hooks do not use before decoding. Like the
store's PrefixWatcher it reconnects with back-off and resumes after the last revision; when
that revision is compacted it re-reads the watched kinds at one revision and hands the
snapshot over as a resync, so nothing is skipped silently.

`read_at()` reads the watched kinds as they were at a past revision (in pages, pinned to that
revision), so a restarted runner starts from exactly the state it had delivered up to.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from cluster.hooks.derive import WATCHED_KINDS, Change
from cluster.store.client import Store
from cluster.store.errors import CompactedError, StoreError, translate, translated
from cluster.store.keyspace import BadKey
from cluster.store.records import RECORD_TYPES, MalformedRecord
from cluster.store.seal import WrongDataKey
from cluster.store.watch import MALFORMED

log = logging.getLogger("cluster.hooks")

READ_PAGE = 1000


class HistoryCompacted(StoreError):
    """The revision asked for is older than etcd's compaction point."""


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


def _range_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


def read_at(store: Store, revision: int | None = None) -> tuple[list[Change], int]:
    """Every watched record as of `revision` (None: now), read in pages pinned to one
    revision, and that revision. HistoryCompacted if etcd no longer has it."""
    changes: list[Change] = []
    try:
        with translated(store.endpoint):
            for kind in WATCHED_KINDS:
                start = store.keyspace.kind_prefix(kind).encode()
                end = _range_end(start)
                while True:
                    resp = store.raw.get_range_response(start, end, sort_order="ascend",
                                                        limit=READ_PAGE, revision=revision)
                    if revision is None:
                        revision = int(resp.header.revision)
                    for kv in resp.kvs:
                        change = change_of(store, kv.key.decode("utf-8", "replace"), kv.value,
                                           int(kv.mod_revision))
                        if change is not None:
                            changes.append(change)
                    if not resp.more or not resp.kvs:
                        break
                    start = resp.kvs[-1].key + b"\0"
    except StoreError as exc:
        if "compacted" in str(exc):
            raise HistoryCompacted(str(exc)) from None
        raise
    assert revision is not None
    return changes, revision


class KeyspaceStream:
    """One watch on the cluster root, from `start_revision`, on its own thread.

    Callbacks (on that thread): `on_change(change)` per change in revision order;
    `on_progress(revision)` when every change up to `revision` was handed over;
    `on_resync(snapshot, revision)` after history was compacted away: the watched state at
    `revision`, to be compared with what the consumer holds.
    """

    def __init__(self, store: Store, start_revision: int, on_change: Callable[[Change], None],
                 on_progress: Callable[[int], None],
                 on_resync: Callable[[list[Change], int], None],
                 backoff_max_s: float = 5.0) -> None:
        self._parent = store
        self.last_revision = start_revision - 1
        self._on_change = on_change
        self._on_progress = on_progress
        self._on_resync = on_resync
        self._backoff_max_s = backoff_max_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._store: Store | None = None

    def start(self) -> None:
        self._stop.clear()
        self._store = self._parent.clone()
        self._thread = threading.Thread(target=self._run, args=(self._store,),
                                        name="hooks-watch", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._store is not None:
            with contextlib.suppress(StoreError):
                self._store.close()
            self._store = None

    def _run(self, store: Store) -> None:
        backoff = 0.1
        down = False
        while not self._stop.is_set():
            try:
                self._stream(store)
                return
            except CompactedError as exc:
                log.warning("revision %d is compacted (%s): re-reading the cluster state",
                            self.last_revision + 1, exc)
                try:
                    snapshot, revision = read_at(store)
                except StoreError as err:
                    log.warning("re-read failed: %s; retrying", err)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, self._backoff_max_s)
                    continue
                self.last_revision = revision
                self._on_resync(snapshot, revision)
            except StoreError as exc:
                if not down:
                    log.warning("watch interrupted: %s; resuming after revision %d", exc,
                                self.last_revision)
                down = True
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self._backoff_max_s)
                continue
            if down:
                log.info("watch resumed after revision %d", self.last_revision)
                down = False
            backoff = 0.1

    def _stream(self, store: Store) -> None:
        inbox: queue.Queue[Any] = queue.Queue()
        with translated(store.endpoint):
            watch_id = store.raw.add_watch_prefix_callback(
                store.keyspace.root, inbox.put, start_revision=self.last_revision + 1)
        try:
            while not self._stop.is_set():
                try:
                    item = inbox.get(timeout=0.2)
                except queue.Empty:
                    continue
                if isinstance(item, BaseException):
                    raise translate(item, store.endpoint)
                if item is None:
                    raise StoreError("watch stream closed")
                self._response(store, item)
        finally:
            with contextlib.suppress(Exception):  # the stream may already be gone
                store.raw.cancel_watch(watch_id)

    def _response(self, store: Store, response: Any) -> None:
        """One watch response: every event of the revisions it covers, in order."""
        for ev in response.events:
            revision = int(ev.mod_revision)
            deleted = type(ev).__name__ == "DeleteEvent"
            change = change_of(store, ev.key.decode("utf-8", "replace"),
                               None if deleted else ev.value, revision)
            if change is not None:
                self._on_change(change)
            self.last_revision = max(self.last_revision, revision)
        # etcd never splits one revision across watch responses of a prefix watch
        self._on_progress(self.last_revision)
