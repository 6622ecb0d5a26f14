"""What keyd writes to etcd, and in which order, before a reply may leave.

A `Changes` collects what one step of the IKE core did. `Persister.write` makes it durable,
in as few etcd round trips as the step allows — one for IKE_SA_INIT, IKE_AUTH, a Child SA
rekey or a DELETE:

1. one transaction with everything the reply stands for: every updated `ike/<id>` (sealed
   state); every new `sa/<spi_in>` (sealed keys), guarded by create-if-absent — what makes
   inbound SPIs cluster-unique; the client's address lease `pool/<ip>`, guarded likewise (or
   by the exact version it takes over); for a newly established IKE SA its owner
   `assign/<ike_sa_id>` (epoch 1, the node the planner's weighted rendezvous hash picks
   over ready nodes; no ready node: left to the sprayer), guarded by create-if-absent; and
   the Child SAs an IKE rekey moved to the new IKE SA id. If a guard fails the step is not
   durable (`WriteConflict`): the caller forgets it and the client's retransmission is
   negotiated again, with a fresh SPI or address. (An owner the sprayer wrote first is not a
   conflict: the transaction is repeated without it.)
2. after an IKE SA rekey: the owner (same node, same epoch) and the lease follow the new id;
3. removals, in one transaction: `sa/` of deleted Child SAs; for a deleted IKE SA its
   `ike/`, Child SAs and lease — then its `assign/` in a second one, so that no watcher
   sees a client with Child SAs but without an owner.

Only when `write` returns may the step's datagrams be sent. Any StoreError propagates: the
caller withholds the reply. Removals that fail are kept and retried (`retry_removals`): a
stale record costs nothing while the data it describes is gone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cluster.store.client import TXN_MAX_OPS, Guard, Store
from cluster.store.errors import StoreError
from cluster.store.records import Assignment, ChildSaRecord, IkeSaRecord, NodeRecord, Record
from sprayer.plan import NodeState, NodeView, candidates, choose

from .metrics import KeydMetrics
from .pool import AddressPool, LeaseClaim
from .view import ClusterView

log = logging.getLogger("keyd.persist")


class WriteConflict(StoreError):
    """A guarded create or takeover lost: an inbound SPI or an address is taken already."""


SpiCollision = WriteConflict  # the common case of a conflict


@dataclass(slots=True)
class IkeRekeyed:
    """IKE SA `old` was replaced by `new` (RFC 7296 §2.18): owner and address follow."""

    old: str
    new: str
    virtual_ip: str | None = None


@dataclass(slots=True)
class Changes:
    """Everything one step of the core asks to make durable."""

    ike_puts: dict[str, IkeSaRecord] = field(default_factory=dict)
    new_children: list[ChildSaRecord] = field(default_factory=list)
    moved_children: list[ChildSaRecord] = field(default_factory=list)  # new ike_sa_id
    leases: list[LeaseClaim] = field(default_factory=list)
    established: set[str] = field(default_factory=set)   # IKE SAs that need an owner
    deleted_children: list[int] = field(default_factory=list)
    deleted_ike: dict[str, IkeSaRecord | None] = field(default_factory=dict)
    rekeyed: list[IkeRekeyed] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.ike_puts or self.new_children or self.moved_children or self.leases
                    or self.deleted_children or self.deleted_ike or self.rekeyed)

    def has_state(self) -> bool:
        return bool(self.ike_puts or self.new_children or self.moved_children or self.leases)

    def state_records(self) -> list[Record]:
        """The records the step's state transaction puts (owners aside)."""
        return [*self.ike_puts.values(), *self.new_children, *self.moved_children,
                *(c.lease for c in self.leases if not c.held)]

    def completes_something(self) -> bool:
        """True when the step creates or removes SAs (not just a message-ID advance)."""
        return bool(self.new_children or self.deleted_children or self.deleted_ike
                    or self.rekeyed or self.leases)


class Persister:
    def __init__(self, store: Store, pool: AddressPool | None, metrics: KeydMetrics,
                 clock: Callable[[], float] = time.time,
                 view: ClusterView | None = None) -> None:
        self.store = store
        self.pool = pool
        self.metrics = metrics
        self.clock = clock
        self.view = view
        self._pending: list[list[str]] = []   # removal transactions that failed
        self._owners_due: list[str] = []      # assign/ keys for the next transaction
        self._no_nodes_said = False

    # -- the ordered write ------------------------------------------------------------------
    def write(self, changes: Changes) -> None:
        """Make `changes` durable in the order of the module docstring; raise StoreError."""
        if changes.has_state():
            self._write_state(changes)
        for rekey in changes.rekeyed:
            self._move_owner(rekey)
        self._remove(changes)

    def write_batch(self, batch: list[Changes]) -> list[StoreError | None]:
        """Make several steps durable at once (group commit): what each step writes before
        its reply goes into shared transactions — one for the state of every step whose
        keys do not overlap (up to TXN_MAX_OPS operations), then one for their removals
        — instead of one round trip per step. Owners of removed IKE SAs go with the next
        transaction (in a later revision, as they must). Returns
        per step None (durable) or the StoreError that kept it from being durable. A lost
        guard in a shared transaction does not fail the others: that group is written again
        step by step, which names the step whose guard lost. A step with an IKE SA rekey is
        written on its own (`write`)."""
        results: list[StoreError | None] = [None] * len(batch)
        simple = [i for i, c in enumerate(batch) if not c.rekeyed]
        for n, group in enumerate(self._groups(batch, simple)):
            due: list[str] = []
            if n == 0 and not any(batch[i].deleted_children or batch[i].deleted_ike
                                  for i in simple):
                due, self._owners_due = self._owners_due, []   # owners removed earlier
            try:
                ok = self._write_states([batch[i] for i in group], due)
                if not ok:
                    self._owners_due = due + self._owners_due
            except StoreError as exc:
                self._owners_due = due + self._owners_due
                for i in group:
                    results[i] = exc
                continue
            if not ok:   # someone's guard lost: find whose
                for i in group:
                    try:
                        self._write_state(batch[i])
                    except StoreError as exc:
                        results[i] = exc
        for i, c in enumerate(batch):
            if c.rekeyed:
                try:
                    self.write(c)
                except StoreError as exc:
                    results[i] = exc
        self._remove_many([batch[i] for i in simple if results[i] is None], defer_owners=True)
        return results

    def _groups(self, batch: list[Changes], indices: list[int]) -> list[list[int]]:
        """Steps whose state writes share one transaction: disjoint keys, at most
        TXN_MAX_OPS operations each."""
        indices = [i for i in indices if batch[i].has_state()]
        if len(indices) <= 1:
            return [indices] if indices else []
        groups: list[list[int]] = []
        keys: set[str] = set()
        ops = 0
        for i in indices:
            c = batch[i]
            if not c.has_state():
                continue
            mine = {self.store.key_of(r) for r in c.state_records()}
            mine |= {self.store.keyspace.assign(a) for a in c.established}
            if groups and (mine & keys or ops + len(mine) > TXN_MAX_OPS):
                groups.append([])
                keys, ops = set(), 0
            if not groups:
                groups.append([])
            groups[-1].append(i)
            keys |= mine
            ops += len(mine)
        return [g for g in groups if g]

    def _state_ops(self, changes: Changes) -> tuple[list[Record], list[Guard], list[LeaseClaim]]:
        puts: list[Record] = list(changes.state_records())
        guards = [Guard(self.store.key_of(c), 0) for c in changes.new_children]
        fresh = [c for c in changes.leases if not c.held]
        guards += [Guard(self.store.key_of(c.lease), c.mod_revision) for c in fresh]
        return puts, guards, fresh

    def _write_states(self, group: list[Changes], deletes: list[str]) -> bool:
        """The state of several steps in one transaction, owners included, and `deletes`;
        False if a guard lost (nothing written)."""
        if len(group) == 1:
            try:
                self._write_state(group[0], deletes)
            except WriteConflict:
                return False
            return True
        puts: list[Record] = []
        guards: list[Guard] = []
        fresh: list[LeaseClaim] = []
        owners: list[Assignment] = []
        for c in group:
            p, g, f = self._state_ops(c)
            puts += p
            guards += g
            fresh += f
            owners += [a for a in (self._owner(i) for i in sorted(c.established)) if a]
        label = "ike_sa+child_sa" if any(c.new_children for c in group) else "ike_sa"
        with self.metrics.etcd_write(label):
            revision = self.store.commit_revision(
                puts=[*puts, *owners], deletes=deletes,
                guards=[*guards, *(Guard(self.store.key_of(a), 0) for a in owners)])
        if revision is not None:
            self._written(fresh, owners, revision)
        return revision is not None

    def _written(self, fresh: list[LeaseClaim], owners: list[Assignment],
                 revision: int) -> None:
        if self.pool is not None:
            for c in fresh:
                self.pool.written(c, revision)
        for a in owners:
            log.debug("client assigned", extra={"ike_sa": a.ike_sa_id, "node": a.node})

    def _write_state(self, changes: Changes, deletes: list[str] | None = None) -> None:
        puts, guards, fresh = self._state_ops(changes)
        owners = [a for a in (self._owner(i) for i in sorted(changes.established)) if a]
        label = "ike_sa+child_sa" if changes.new_children else "ike_sa"
        with self.metrics.etcd_write(label):
            revision = self.store.commit_revision(
                puts=[*puts, *owners], deletes=deletes or [],
                guards=[*guards, *(Guard(self.store.key_of(a), 0) for a in owners)])
            if revision is None and owners:
                # maybe only an owner was there already (the sprayer was quicker): fine
                revision = self.store.commit_revision(puts=puts, guards=guards,
                                                      deletes=deletes or [])
                owners = []
        if revision is None:
            what = [f"sa/{c.spi_in:08x}" for c in changes.new_children]
            what += [f"pool/{c.lease.ip}" for c in fresh]
            raise WriteConflict(f"taken already in the cluster: {', '.join(what)}")
        self._written(fresh, owners, revision)

    def _nodes(self) -> list[NodeRecord]:
        if self.view is not None and self.view.nodes_synced:
            return self.view.nodes()
        return [v.record for v in self.store.list(NodeRecord).items]

    def _owner(self, ike_sa_id: str) -> Assignment | None:
        nodes = [NodeView(n.id, float(n.capacity), NodeState(n.state)) for n in self._nodes()]
        node = choose(ike_sa_id, candidates(nodes))
        if node is None:
            if not self._no_nodes_said:
                log.warning("no ready node to own new clients; the sprayer will assign them",
                            extra={"ike_sa": ike_sa_id})
                self._no_nodes_said = True
            return None
        if self._no_nodes_said:
            log.info("ready nodes again: new clients get an owner", extra={"node": node})
            self._no_nodes_said = False
        return Assignment(ike_sa_id=ike_sa_id, node=node, epoch=1, phase="active",
                          previous_node=None, updated_at=self.clock())

    def _move_owner(self, rekey: IkeRekeyed) -> None:
        """After an IKE SA rekey the client keeps its owner (same node, same epoch) and its
        address under the new IKE SA id; the old id's records go with the old IKE SA."""
        old = self.store.get(Assignment, rekey.old)
        if old is not None:
            moved = Assignment(ike_sa_id=rekey.new, node=old.record.node, epoch=old.record.epoch,
                               phase=old.record.phase, previous_node=old.record.previous_node,
                               updated_at=self.clock())
            with self.metrics.etcd_write("assignment"):
                self.store.create(moved)
        if self.pool is not None and rekey.virtual_ip:
            self.pool.transfer(rekey.virtual_ip, rekey.old, rekey.new)

    # -- removals ---------------------------------------------------------------------------
    def _removal_keys(self, changes: Changes, claimed: frozenset[str] = frozenset()
                      ) -> tuple[list[str], list[tuple[str, str]]]:
        """The keys to delete, and the (address, IKE SA) leases among them — but not the
        leases of `claimed` addresses, just taken over by another IKE SA (a returning
        client's INITIAL_CONTACT gets its old address back)."""
        ks = self.store.keyspace
        keys = [ks.sa(spi) for spi in changes.deleted_children]
        released: list[tuple[str, str]] = []
        for ike_sa_id, last in changes.deleted_ike.items():
            if last is None:   # not ours in memory: read what it had
                held = self.store.get(IkeSaRecord, ike_sa_id)
                last = held.record if held else None
            keys += [ks.ike(ike_sa_id), ks.assign(ike_sa_id)]
            if last is not None:
                keys += [ks.sa(spi) for spi in last.child_spis]
                if last.virtual_ip and last.virtual_ip not in claimed:
                    keys.append(ks.pool(last.virtual_ip))
                    released.append((last.virtual_ip, ike_sa_id))
        return list(dict.fromkeys(keys)), released

    def _remove(self, changes: Changes) -> None:
        self._remove_many([changes])

    def _remove_many(self, batch: list[Changes], defer_owners: bool = False) -> None:
        """The removals of several steps together (sa/, ike/, pool/ in one transaction,
        then the owners); deferred and retried if etcd fails."""
        batch = [c for c in batch if c.deleted_children or c.deleted_ike]
        if not batch:
            return
        try:
            keys: list[str] = []
            released: list[tuple[str, str]] = []
            claimed = frozenset(c.lease.ip for ch in batch for c in ch.leases)
            for changes in batch:
                k, r = self._removal_keys(changes, claimed)
                keys += k
                released += r
            self._delete(list(dict.fromkeys(keys)), owners_now=not defer_owners)
            if self.pool is not None:
                for ip, ike_sa_id in released:
                    self.pool.released(ip, ike_sa_id)
        except StoreError as exc:
            log.warning("removal deferred until etcd answers", extra={"error": str(exc)})
            ks = self.store.keyspace
            for changes in batch:
                self._pending.append(
                    [ks.sa(s) for s in changes.deleted_children]
                    + [k for i in changes.deleted_ike for k in (ks.ike(i), ks.assign(i))]
                    + [ks.sa(s) for r in changes.deleted_ike.values() if r
                       for s in r.child_spis]
                    + [ks.pool(r.virtual_ip) for r in changes.deleted_ike.values()
                       if r and r.virtual_ip])

    def _delete(self, keys: list[str], owners_now: bool = True) -> None:
        # owners last, in a later revision: a sprayer that sees a client without an owner
        # but with Child SAs assigns it, so the Child SAs must be seen gone first. The
        # owners may go with the next transaction (group commit: the next step's, or
        # `flush_owner_deletes` when none comes): one round trip less per DELETE.
        prefix = self.store.keyspace.kind_prefix("assign")
        owners = [k for k in keys if k.startswith(prefix)]
        rest = [k for k in keys if not k.startswith(prefix)]
        due, self._owners_due = self._owners_due, []
        rest += [k for k in due if k not in owners]
        try:
            with self.metrics.etcd_write("delete"):
                for i in range(0, len(rest), TXN_MAX_OPS):
                    self.store.commit(deletes=rest[i:i + TXN_MAX_OPS])
                if owners_now:
                    for i in range(0, len(owners), TXN_MAX_OPS):
                        self.store.commit(deletes=owners[i:i + TXN_MAX_OPS])
                    owners = []
        except StoreError:
            self._owners_due = due + self._owners_due
            raise
        self._owners_due += owners

    @property
    def owners_due(self) -> bool:
        """Owners of removed IKE SAs wait for the next transaction."""
        return bool(self._owners_due)

    def flush_owner_deletes(self) -> None:
        """Remove the owners that wait, now (no other write came along)."""
        due, self._owners_due = self._owners_due, []
        try:
            with self.metrics.etcd_write("owner"):
                for i in range(0, len(due), TXN_MAX_OPS):
                    self.store.commit(deletes=due[i:i + TXN_MAX_OPS])
        except StoreError as exc:
            log.warning("removal deferred until etcd answers", extra={"error": str(exc)})
            self._pending.append(due)

    def retry_removals(self) -> int:
        """Retry removals that failed while etcd was away; return how many are left."""
        pending, self._pending = self._pending, []
        for i, keys in enumerate(pending):
            try:
                self._delete(keys)
            except StoreError:
                self._pending.extend(pending[i:])
                break
        return len(self._pending)

    @property
    def pending_removals(self) -> int:
        return len(self._pending)

    # -- expiry of what nobody holds --------------------------------------------------------
    def sweep_expired(self, max_age_s: float, grace_s: float = 60.0) -> list[str]:
        """Remove IKE SAs (with their Child SAs, owner and address) not updated for
        `max_age_s` — left behind by an instance that died, for a client that never came
        back; any live IKE SA is updated at least once per lifetime (rekey or
        reauthentication) — Child SAs past their hard lifetime plus `grace_s`, and owners
        of IKE SAs that are gone."""
        now = self.clock()
        gone: list[str] = []
        for v in self.store.list(IkeSaRecord).items:
            record = v.record
            if now - record.updated_at < max_age_s:
                continue
            # compare-and-delete: an instance that just continued it wins
            if self.store.delete_if(IkeSaRecord, record.ike_sa_id, v.mod_revision):
                self._remove(Changes(deleted_ike={record.ike_sa_id: record}))
                gone.append(record.ike_sa_id)
                self.metrics.swept.inc()
        held = {v.record.ike_sa_id for v in self.store.list(IkeSaRecord).items}
        for a in self.store.list(Assignment).items:
            # an owner whose IKE SA is gone (written by a watcher that lagged behind a delete)
            if a.record.ike_sa_id not in held and now - a.record.updated_at > grace_s and \
                    self.store.delete_if(Assignment, a.record.ike_sa_id, a.mod_revision):
                log.info("owner of a gone IKE SA removed", extra={"ike_sa": a.record.ike_sa_id})
        for c in self.store.list(ChildSaRecord).items:
            child = c.record
            if now > child.created_at + child.hard_lifetime_s + grace_s and \
                    self.store.delete_if(ChildSaRecord, child.spi_in, c.mod_revision):
                log.info("expired Child SA removed", extra={"spi": f"{child.spi_in:08x}"})
        return gone
