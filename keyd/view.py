"""What keyd keeps in view without asking etcd on every handshake: the nodes (for the owner
of a new client) and the address leases (for a new client's virtual IP).

Both follow etcd with prefix watches (cluster.store.watch). The view is only a hint: every
decision taken from it is written with a compare-and-swap guard, so a stale view costs a
retry, never a wrong record. Until a watch has delivered its first full read, `synced` is
False and callers read etcd directly.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from cluster.store.client import Store
from cluster.store.records import NodeRecord, PoolLease
from cluster.store.watch import PrefixWatcher, RecordDeleted, RecordPut, WatchEvent, WatchResynced


@dataclass(frozen=True, slots=True)
class HeldLease:
    """A lease as last seen, with the revision a compare-and-swap needs."""

    record: PoolLease
    mod_revision: int


class ClusterView:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nodes: dict[str, NodeRecord] = {}
        self._leases: dict[str, HeldLease] = {}
        self._synced = {"nodes": False, "pool": False}
        self._watchers: list[PrefixWatcher] = []

    def start(self, store: Store) -> None:
        self.stop()
        self._watchers = [store.watch(NodeRecord, self._on_node),
                          store.watch(PoolLease, self._on_lease)]

    def stop(self) -> None:
        for w in self._watchers:
            w.stop()
        self._watchers = []

    # -- reads (any thread) ----------------------------------------------------------------
    @property
    def nodes_synced(self) -> bool:
        return self._synced["nodes"]

    @property
    def leases_synced(self) -> bool:
        return self._synced["pool"]

    def nodes(self) -> list[NodeRecord]:
        with self._lock:
            return list(self._nodes.values())

    def leases(self) -> dict[str, HeldLease]:
        with self._lock:
            return dict(self._leases)

    def note_lease(self, lease: PoolLease | None, ip: str, mod_revision: int = 0) -> None:
        """Record our own write at once (the watch confirms it a moment later)."""
        with self._lock:
            held = self._leases.get(ip)
            if held is not None and held.mod_revision > mod_revision and mod_revision:
                return   # the watch has told of a later write already
            if lease is None:
                self._leases.pop(ip, None)
            elif held is not None and held.mod_revision >= mod_revision and \
                    held.record == lease:
                return   # the watch delivered this very write first: keep its revision
            else:
                self._leases[ip] = HeldLease(lease, mod_revision)

    # -- watch events (watcher threads) -----------------------------------------------------
    def _on_node(self, event: WatchEvent) -> None:
        with self._lock:
            if isinstance(event, RecordPut) and isinstance(event.record, NodeRecord):
                self._nodes[event.name] = event.record
            elif isinstance(event, RecordDeleted):
                self._nodes.pop(event.name, None)
            elif isinstance(event, WatchResynced):
                self._synced["nodes"] = True

    def _on_lease(self, event: WatchEvent) -> None:
        with self._lock:
            if isinstance(event, RecordPut) and isinstance(event.record, PoolLease):
                self._leases[event.name] = HeldLease(event.record, event.revision)
            elif isinstance(event, RecordDeleted):
                self._leases.pop(event.name, None)
            elif isinstance(event, WatchResynced):
                self._synced["pool"] = True
