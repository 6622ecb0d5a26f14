"""Reading the watched kinds as they were at a revision, for the deriver.

The hooks watch each kind with the store's PrefixWatcher (resume from a revision, re-read on
compaction). `read_at()` loads one kind as it was at a past revision, so a restarted runner
starts from exactly the state it had delivered up to, and tells a put from an update.
"""

from __future__ import annotations

import logging

from cluster.hooks.derive import WATCHED_KINDS, Change
from cluster.store.client import Store
from cluster.store.errors import StoreError, translated
from cluster.store.keyspace import BadKey
from cluster.store.records import RECORD_TYPES, MalformedRecord
from cluster.store.seal import WrongDataKey
from cluster.store.watch import MALFORMED

log = logging.getLogger("cluster.hooks")


class HistoryCompacted(StoreError):
    """The revision asked for is older than etcd's compaction point."""


def change_of(store: Store, key: str, record: object | None, revision: int) -> Change | None:
    """The deriver's Change for a watched key, or None for a key it does not use."""
    try:
        kind, name = store.keyspace.split(key)
    except BadKey:
        return None
    if kind not in WATCHED_KINDS:
        return None
    return Change(kind, name, record, revision)


def read_at(store: Store, kind: str, revision: int | None = None) -> tuple[list[Change], int]:
    """Every record of `kind` as of `revision` (None: now), and the revision read.
    HistoryCompacted if etcd no longer has that revision."""
    kwargs = {} if revision is None else {"revision": revision}
    try:
        with translated(store.endpoint):
            resp = store.raw.get_prefix_response(store.keyspace.kind_prefix(kind), **kwargs)
    except StoreError as exc:
        if "compacted" in str(exc):
            raise HistoryCompacted(str(exc)) from None
        raise
    changes = []
    for kv in resp.kvs:
        key = kv.key.decode("utf-8", "replace")
        change = change_of(store, key, None, int(kv.mod_revision))
        if change is None:
            continue
        try:
            record = store.decode(RECORD_TYPES[change.kind], kv.value, key)
        except (MalformedRecord, WrongDataKey, BadKey) as exc:
            MALFORMED.labels(change.kind).inc()
            log.warning("skipped %s", exc)
            continue
        changes.append(Change(change.kind, change.name, record, change.revision))
    return changes, revision if revision is not None else int(resp.header.revision)
