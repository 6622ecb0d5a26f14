"""The node's place in the cluster: its nodes/<id> record on a lease, registering again after
the lease lapsed, noticing an operator's `clusterctl node remove`, and the IV prefix each
registration gives (cluster.esp.nonce). Everything here talks to etcd, so it runs on the
agent's etcd pool, never on the control thread; what it learns is posted back.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from cluster.esp import prefix_from_revision
from cluster.node.config import NodeSection
from cluster.store import (
    Assignment,
    LeaseLost,
    Membership,
    NodeRecord,
    Store,
    StoreError,
    Versioned,
)

log = logging.getLogger("cluster.node")

VERSION = "0.1.0"
RETRY_S = 0.5


class StoreRef:
    """The node's etcd connection, replaced by a fresh one when it keeps failing: after an
    etcd outage a gRPC channel can sit in reconnect back-off for tens of seconds after etcd
    is back."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()

    def reconnect(self, failed: Store) -> None:
        with self._lock:
            if self.store is not failed:
                return  # another thread did it already
            self.store = failed.clone()
        with contextlib.suppress(Exception):
            failed.close()


class NodeMembership:
    """`register()` at start (raises StoreError); `on_lease_lost(reason)` (any thread) when
    the lease lapses; `on_prefix(prefix)` with each fresh IV prefix after the first;
    `draining()`: whether the record says draining."""

    def __init__(self, cfg: NodeSection, ref: StoreRef, pool: ThreadPoolExecutor, *,
                 wall: Callable[[], float], draining: Callable[[], bool],
                 on_lease_lost: Callable[[str], None],
                 on_prefix: Callable[[bytes], None]) -> None:
        self.cfg = cfg
        self.ref = ref
        self.pool = pool
        self.wall = wall
        self.on_lease_lost = on_lease_lost
        self.on_prefix = on_prefix
        self.membership: Membership | None = None
        self.prefix: bytes | None = None  # this incarnation's first IV prefix
        self.draining = draining
        #: set when this node's record was deleted (`clusterctl node remove`) while its lease
        #: lived: it stays out of the cluster until restarted
        self.removed = False
        self.lease_ok = threading.Event()
        self.stopping = False
        self._renewing = False

    def record(self) -> NodeRecord:
        c = self.cfg
        return NodeRecord(c.id, c.address, c.capacity, "draining" if self.draining() else "ready",
                          c.health_port, VERSION, self.wall(), address6=c.address6)

    def register(self) -> None:
        """Take a lease, write nodes/<id> on it; the revision of our own write is this
        incarnation's IV prefix (cluster.esp.nonce)."""
        store = self.ref.store
        m = Membership(store, self.record(), self.cfg.lease_ttl_s, self._lease_lost)
        lease = m.start()
        revision = store.put(m.record, lease=lease)
        prefix = prefix_from_revision(revision)
        if self.prefix is None:
            self.prefix = prefix
        self.membership = m
        self.lease_ok.set()
        log.info("registered %s (lease %x, IV prefix %s)", self.cfg.id, lease, prefix.hex())

    def _lease_lost(self, ev: LeaseLost) -> None:
        self.lease_ok.clear()
        self.on_lease_lost(ev.reason)

    def stop(self) -> None:
        self.stopping = True
        if self.membership is not None:
            with contextlib.suppress(StoreError):
                self.membership.stop(revoke=True)

    def reregister(self, done: Callable[[list[Versioned[Assignment]]], None]) -> None:
        """Register again (pool thread, retried while etcd fails); `done(assignments)`."""
        if self.removed:
            log.info("lease lost; not registering again: this node was removed")
            return

        def run() -> None:
            while not self.stopping:
                store = self.ref.store
                try:
                    if self.membership is not None:
                        with contextlib.suppress(Exception):
                            self.membership.stop(revoke=False)
                        self.membership = None
                    self.register()
                    listing = self.ref.store.list(Assignment)
                except StoreError as e:
                    log.warning("re-registration waits for etcd: %s", e)
                    self.ref.reconnect(store)
                    time.sleep(RETRY_S)
                    continue
                done(listing.items)
                return
        self.pool.submit(run)

    def check_removed(self, key: str, removed: Callable[[str], None]) -> None:
        """Our record is gone while our lease seemed alive. Removed by an operator
        (`clusterctl node remove`) if the lease still lives and nothing wrote the record
        again (then `removed(key)`); an expired lease is the membership's business (it
        re-registers)."""
        if self.stopping or not self.lease_ok.is_set():
            return

        def run() -> None:
            for _ in range(10):
                m = self.membership
                if m is None or self.stopping:
                    return
                store = self.ref.store
                try:
                    if store.get(NodeRecord, self.cfg.id) is not None:
                        return  # registered again meanwhile
                    alive = store.keepalive(m.lease_id) > 0
                except StoreError as e:
                    log.warning("cannot tell why this node's record %s is gone: %s", key, e)
                    time.sleep(RETRY_S)
                    continue
                if alive and self.membership is m:
                    removed(key)
                return
        self.pool.submit(run)

    def renew_prefix(self) -> None:
        """Half the IV counter is used: take a fresh prefix (the revision of a new write of
        our own record) long before the counter could run out (cluster.esp.nonce)."""
        if self._renewing:
            return
        self._renewing = True

        def run() -> None:
            try:
                m = self.membership
                if m is None or self.removed:
                    # a removed node writes no record (it would register again): it keeps
                    # the prefix, whose counter lasts 2^32 IVs, and its clients move away
                    return
                revision = self.ref.store.put(self.record(), lease=m.lease_id)
                prefix = prefix_from_revision(revision)
                self.on_prefix(prefix)
                log.info("IV prefix renewed: %s", prefix.hex())
            except StoreError as e:
                log.warning("IV prefix renewal waits for etcd: %s", e)
            finally:
                self._renewing = False
        self.pool.submit(run)
