"""Lease-held membership on a real etcd: loss when keepalives stop, loss when revoked."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from cluster.lab.forwarder import pipe
from cluster.procs import free_port
from cluster.store import (
    DataKey,
    Keyspace,
    LeaseLost,
    Membership,
    NodeRecord,
    Store,
    StoreError,
)
from cluster.store.watch import wait_for


class Partition:
    """A loopback TCP relay to etcd that can be cut: then every connection through it is
    closed and new ones are refused, as when a node is partitioned from etcd."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.cut = threading.Event()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.2)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._done.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.cut.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    def sever(self) -> None:
        self.cut.set()
        with self._lock:
            for s in self._conns:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._conns.clear()

    def close(self) -> None:
        self._done.set()
        self.sever()
        self._listener.close()
        self._thread.join(2)


@pytest.fixture
def partition(etcd_endpoint: str) -> Iterator[Partition]:
    u = urlsplit(etcd_endpoint)
    assert u.hostname and u.port
    p = Partition((u.hostname, u.port))
    yield p
    p.close()


def node(node_id: str = "node-1") -> NodeRecord:
    return NodeRecord(node_id, "10.30.0.11", 100, "ready", 4501, "0.1.0", time.time())


def test_record_gone_within_ttl_plus_1s_after_keepalives_stop(
        store: Store, partition: Partition, keyspace: Keyspace, data_key: DataKey) -> None:
    ttl_s = 3
    holder_store = Store([partition.endpoint], keyspace, data_key, timeout_s=1.0)
    lost: list[LeaseLost] = []
    m = Membership(holder_store, node(), ttl_s, lost.append)
    m.start()
    try:
        # keepalives hold it well past one TTL
        time.sleep(ttl_s + 1.5)
        assert store.get(NodeRecord, "node-1") is not None
        partition.sever()
        stopped = time.monotonic()
        assert wait_for(lambda: store.get(NodeRecord, "node-1") is None, ttl_s + 5)
        gone_after = time.monotonic() - stopped
        assert gone_after <= ttl_s + 1.0, f"record outlived its lease: {gone_after:.2f}s"
        assert wait_for(m.lost.is_set, ttl_s + 2)
        assert len(lost) == 1 and lost[0].reason == "unreachable"
        assert lost[0].key == keyspace.node("node-1") and lost[0].lease_id == m.lease_id
    finally:
        m.stop()
        holder_store.close()


def test_revoked_lease_reports_expired(store: Store) -> None:
    lost: list[LeaseLost] = []
    m = Membership(store, node("node-2"), 3, lost.append)
    lease = m.start()
    try:
        got = store.get(NodeRecord, "node-2")
        assert got is not None and got.lease_id == lease
        m.update(NodeRecord("node-2", "10.30.0.12", 100, "draining", 4501, "0.1.0", 0.0))
        got = store.get(NodeRecord, "node-2")
        assert got is not None and got.record.state == "draining" and got.lease_id == lease
        store.revoke_lease(lease)  # e.g. an operator removed it
        assert wait_for(m.lost.is_set, 5)
        assert lost[0].reason == "expired"
        assert store.get(NodeRecord, "node-2") is None
    finally:
        m.stop()


def test_stop_revokes_now(store: Store) -> None:
    m = Membership(store, node("node-3"), 10, lambda e: None)
    m.start()
    assert store.get(NodeRecord, "node-3") is not None
    m.stop()
    assert store.get(NodeRecord, "node-3") is None


def test_unreachable_etcd_at_start_is_a_store_error(keyspace: Keyspace) -> None:
    s = Store([f"http://127.0.0.1:{free_port()}"], keyspace, timeout_s=1.0)
    m = Membership(s, node(), 3, lambda e: None)
    with pytest.raises(StoreError, match="unavailable"):
        m.start()
    m.stop(revoke=False)
    s.close()
