"""A small populated cluster in a real etcd, written through cluster/store, for the CLI tests.

Each test gets its own cluster name, so tests share the session's etcd without meeting.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator

import pytest
from cli_records import Cluster, assignment, child, ike, node

from cluster.store.client import Store
from cluster.store.keyspace import Keyspace
from cluster.store.records import KeydRecord, SeqRecord
from cluster.store.seal import DataKey


@pytest.fixture
def writer(etcd_endpoint: str) -> Iterator[Store]:
    """A store with a data key, as keyd and the nodes write (sealed key material)."""
    name = "t" + uuid.uuid4().hex[:10]
    store = Store([etcd_endpoint], Keyspace(name), DataKey(os.urandom(32), "test key"))
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def cluster(writer: Store, etcd_endpoint: str) -> Cluster:
    """Two ready nodes (on a lease), one keyd, three clients with Child SAs and counters."""
    lease = writer.grant_lease(300)
    writer.put(node("node-1", "10.30.0.11"), lease=lease)
    writer.put(node("node-2", "10.30.0.12"), lease=lease)
    writer.put(KeydRecord("keyd-1", "10.30.0.5", "0.1.0", time.time() - 100), lease=lease)
    ikes = [ike(i, f"client{i}@example.net", f"10.99.0.{i}") for i in (1, 2, 3)]
    children = [child(i, rec) for i, rec in zip((1, 2, 3), ikes, strict=True)]
    for i, (rec, sa) in enumerate(zip(ikes, children, strict=True)):
        writer.put(rec)
        writer.put(sa)
        writer.put(assignment(rec, "node-1" if i < 2 else "node-2"))
        # client3's owner publishes traffic (sequence numbers above it: a jump); the other
        # two records are as a node that did not record traffic wrote them
        traffic = (40, 90, 4000, 9 << 20) if i == 2 else (None, None, None, None)
        writer.put(SeqRecord(sa.spi_in, "node-1" if i < 2 else "node-2", 1, 100 + i, 50 + i, 0,
                             "checkpoint", time.time(), *traffic))
    return Cluster(writer, etcd_endpoint, writer.keyspace.cluster, lease, ikes, children)
