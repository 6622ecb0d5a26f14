"""What keyd keeps in view without asking etcd on every handshake: the nodes (for the owner
of a new client), the address leases (for a new client's virtual IP) and the traffic policies
(for the policy a new Child SA carries, cluster.policy.binding).

Both follow etcd with prefix watches (cluster.store.watch) — the address leases only while
other keyd instances are registered (`follow_pool`): alone, an instance is the only writer
of `pool/` and keeps the view from its own writes. The view is only a hint: every
decision taken from it is written with a compare-and-swap guard, so a stale view costs a
retry, never a wrong record. Until a watch has delivered its first full read, `synced` is
False and callers read etcd directly.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

from cluster.store.client import Store
from cluster.store.records import NodeRecord, Policy, PoolLease
from cluster.store.watch import (
    PrefixWatcher,
    RecordDeleted,
    RecordMalformed,
    RecordPut,
    WatchEvent,
    WatchResynced,
)


@dataclass(frozen=True, slots=True)
class HeldLease:
    """A lease as last seen, with the revision a compare-and-swap needs."""

    record: PoolLease
    mod_revision: int


class LeaseIndex:
    """Address leases by address, and the two lookups a claim needs besides: by IKE SA and
    by identity (a claim must not scan every lease: there is one per client)."""

    def __init__(self, leases: Iterable[HeldLease] = ()) -> None:
        self._by_ip: dict[str, HeldLease] = {}
        self._by_ike_sa: dict[str, dict[str, None]] = {}
        self._by_identity: dict[str, dict[str, None]] = {}
        for held in leases:
            self.put(held.record.ip, held)

    def put(self, ip: str, held: HeldLease) -> None:
        self.pop(ip)
        self._by_ip[ip] = held
        self._by_ike_sa.setdefault(held.record.ike_sa_id, {})[ip] = None
        self._by_identity.setdefault(held.record.identity, {})[ip] = None

    def pop(self, ip: str) -> HeldLease | None:
        held = self._by_ip.pop(ip, None)
        if held is not None:
            for index, key in ((self._by_ike_sa, held.record.ike_sa_id),
                               (self._by_identity, held.record.identity)):
                ips = index.get(key)
                if ips is not None:
                    ips.pop(ip, None)
                    if not ips:
                        del index[key]
        return held

    def get(self, ip: str) -> HeldLease | None:
        return self._by_ip.get(ip)

    def of_ike_sa(self, ike_sa_id: str, version: int = 4) -> HeldLease | None:
        """The IKE SA's lease of one address family (4 or 6): an IKE SA holds at most one
        of each."""
        for ip in self._by_ike_sa.get(ike_sa_id, ()):
            if (":" in ip) == (version == 6):
                return self._by_ip[ip]
        return None

    def of_identity(self, identity: str) -> list[HeldLease]:
        return [self._by_ip[ip] for ip in self._by_identity.get(identity, ())]

    def ips(self) -> list[str]:
        return list(self._by_ip)

    def as_dict(self) -> dict[str, HeldLease]:
        return dict(self._by_ip)


class ClusterView:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nodes: dict[str, NodeRecord] = {}
        self._leases = LeaseIndex()
        #: policy/ by name: the last valid version of each, and the names whose current
        #: value is malformed
        self._policies: dict[str, Policy] = {}
        self._bad_policies: set[str] = set()
        self._synced = {"nodes": False, "pool": False, "policy": False}
        self._watchers: dict[str, PrefixWatcher] = {}
        self._store: Store | None = None

    def start(self, store: Store) -> None:
        self.stop()
        self._store = store
        self._watchers = {"nodes": store.watch(NodeRecord, self._on_node),
                          "pool": store.watch(PoolLease, self._on_lease),
                          "policy": store.watch(Policy, self._on_policy,
                                                report_malformed=True)}

    def stop(self) -> None:
        for w in self._watchers.values():
            w.stop()
        self._watchers = {}

    def follow_pool(self, follow: bool) -> PrefixWatcher | None:
        """Follow `pool/` with a watch (other keyd instances lease addresses too), or — once
        it has been read in full — keep the leases from this instance's own writes alone
        (no other instance is registered: nobody else writes `pool/`, and every lease put
        and delete would otherwise come back as a watch event). Returns a watcher to stop
        (blocking: not on the event loop's thread)."""
        w = self._watchers.get("pool")
        if follow and w is None and self._store is not None:
            self._watchers["pool"] = self._store.watch(PoolLease, self._on_lease)
        elif not follow and w is not None and self._synced["pool"]:
            return self._watchers.pop("pool")
        return None

    # -- reads (any thread) ----------------------------------------------------------------
    @property
    def nodes_synced(self) -> bool:
        return self._synced["nodes"]

    @property
    def leases_synced(self) -> bool:
        return self._synced["pool"]

    @property
    def policies_synced(self) -> bool:
        return self._synced["policy"]

    def policies(self) -> tuple[dict[str, Policy], frozenset[str]]:
        """The policies by name (last valid versions) and those now malformed."""
        with self._lock:
            return dict(self._policies), frozenset(self._bad_policies)

    def nodes(self) -> list[NodeRecord]:
        with self._lock:
            return list(self._nodes.values())

    def leases(self) -> dict[str, HeldLease]:
        with self._lock:
            return self._leases.as_dict()

    # the lookups of a claim (LeaseIndex's), without copying every lease
    def get(self, ip: str) -> HeldLease | None:
        with self._lock:
            return self._leases.get(ip)

    def of_ike_sa(self, ike_sa_id: str, version: int = 4) -> HeldLease | None:
        with self._lock:
            return self._leases.of_ike_sa(ike_sa_id, version)

    def of_identity(self, identity: str) -> list[HeldLease]:
        with self._lock:
            return self._leases.of_identity(identity)

    def note_lease(self, lease: PoolLease | None, ip: str, mod_revision: int = 0) -> None:
        """Record our own write at once (the watch confirms it a moment later)."""
        with self._lock:
            held = self._leases.get(ip)
            if held is not None and held.mod_revision > mod_revision and mod_revision:
                return   # the watch has told of a later write already
            if lease is None:
                self._leases.pop(ip)
            elif held is not None and held.mod_revision >= mod_revision and \
                    held.record == lease:
                return   # the watch delivered this very write first: keep its revision
            else:
                self._leases.put(ip, HeldLease(lease, mod_revision))

    # -- watch events (watcher threads) -----------------------------------------------------
    def _on_node(self, event: WatchEvent) -> None:
        with self._lock:
            if isinstance(event, RecordPut) and isinstance(event.record, NodeRecord):
                self._nodes[event.name] = event.record
            elif isinstance(event, RecordDeleted):
                self._nodes.pop(event.name, None)
            elif isinstance(event, WatchResynced):
                self._synced["nodes"] = True

    def _on_policy(self, event: WatchEvent) -> None:
        with self._lock:
            if isinstance(event, RecordPut) and isinstance(event.record, Policy):
                self._policies[event.name] = event.record
                self._bad_policies.discard(event.name)
            elif isinstance(event, RecordMalformed):
                self._bad_policies.add(event.name)
            elif isinstance(event, RecordDeleted):
                self._policies.pop(event.name, None)
                self._bad_policies.discard(event.name)
            elif isinstance(event, WatchResynced):
                names = {k.rsplit("/", 1)[-1] for k in event.keys}
                for name in [n for n in self._policies if n not in names]:
                    del self._policies[name]
                self._bad_policies &= names
                self._synced["policy"] = True

    def _on_lease(self, event: WatchEvent) -> None:
        with self._lock:
            if isinstance(event, RecordPut) and isinstance(event.record, PoolLease):
                self._leases.put(event.name, HeldLease(event.record, event.revision))
            elif isinstance(event, RecordDeleted):
                self._leases.pop(event.name)
            elif isinstance(event, WatchResynced):
                # a full read: whatever it did not find is gone (maybe while not followed)
                names = {k.rsplit("/", 1)[-1] for k in event.keys}
                for ip in [ip for ip in self._leases.ips() if ip not in names]:
                    self._leases.pop(ip)
                self._synced["pool"] = True
