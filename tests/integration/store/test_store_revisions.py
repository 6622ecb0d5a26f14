"""Reads at a past revision on a real etcd, and what a compacted or future revision gives."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from cluster.store import ChildSaRecord, CompactedError, FutureRevision, NodeRecord, Store

Factory = Callable[..., Any]


def node(node_id: str, state: str = "ready") -> NodeRecord:
    return NodeRecord(node_id, "10.30.0.11", 100, state, 4501, "0.1", 0.0)  # type: ignore[arg-type]


def test_list_and_scan_at_a_revision(store: Store, child_sa: Factory) -> None:
    store.put(node("n1"))
    first = store.put(child_sa(0xD1000001))
    store.put(node("n1", "draining"))
    store.put(node("n2"))
    store.delete(ChildSaRecord, 0xD1000001)
    then = store.list(NodeRecord, revision=first)
    assert then.revision == first
    assert [(v.record.id, v.record.state) for v in then.items] == [("n1", "ready")]
    assert [v.record.spi_in for v in store.list(ChildSaRecord, first).items] == [0xD1000001]
    assert store.list(ChildSaRecord).items == []
    now = store.list(NodeRecord)
    assert [(v.record.id, v.record.state) for v in now.items] == \
        [("n1", "draining"), ("n2", "ready")]
    kvs, rev = store.scan(store.keyspace.root, revision=first)
    assert rev == first and len(kvs) == 2


def test_scan_at_a_revision_reads_every_page_at_that_revision(store: Store) -> None:
    for i in range(7):
        store.put(node(f"n{i}"))
    pinned = store.revision()
    for i in range(7, 12):
        store.put(node(f"n{i}"))
    store.delete(NodeRecord, "n0")
    kvs, rev = store.scan(store.keyspace.kind_prefix("nodes"), page=2, revision=pinned)
    assert rev == pinned
    assert sorted(kv.key.decode().rsplit("/", 1)[1] for kv in kvs) == \
        sorted(f"n{i}" for i in range(7))


def test_scan_many_reads_every_prefix_at_one_revision(store: Store, child_sa: Factory) -> None:
    store.put(node("n1"))
    store.put(child_sa(0xD2000001))
    prefixes = [store.keyspace.kind_prefix("nodes"), store.keyspace.kind_prefix("sa")]
    kvs, rev = store.scan_many(prefixes)
    store.put(node("n2"))
    again, rev2 = store.scan_many(prefixes, revision=rev)
    assert rev2 == rev and len(again) == len(kvs) == 2


def test_compacted_revision_raises_compacted_error(store: Store) -> None:
    old = store.put(node("n1"))
    store.put(node("n1", "draining"))
    head = store.put(node("n2"))
    store.raw.compact(head)
    with pytest.raises(CompactedError) as exc:
        store.list(NodeRecord, revision=old)
    assert exc.value.revision == old
    with pytest.raises(CompactedError):
        store.scan(store.keyspace.root, revision=old)
    # the compaction point itself and later still read
    assert len(store.list(NodeRecord, revision=head).items) == 2


def test_future_revision_is_its_own_error(store: Store) -> None:
    with pytest.raises(FutureRevision):
        store.list(NodeRecord, revision=store.revision() + 1000)
