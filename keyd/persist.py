"""What keyd writes to etcd, and in which order, before a reply may leave.

A `Changes` collects what one step of the IKE core did. `Persister.write_batch` makes the
changes of many steps durable at once (group commit), `Persister.write` those of one step:

1. one transaction with everything the replies stand for: every updated `ike/<id>` (sealed
   state); every new `sa/<spi_in>` (sealed keys), guarded by create-if-absent — what makes
   inbound SPIs cluster-unique; the client's address lease `pool/<ip>`, guarded likewise (or
   by the exact version it takes over); for a newly established IKE SA its owner
   `assign/<ike_sa_id>` (epoch 1, the node the planner's weighted rendezvous hash picks
   over ready nodes; no ready node: left to the sprayer), guarded by create-if-absent; the
   Child SAs an IKE rekey moved to the new IKE SA id; and what the same steps removed
   (`sa/` of a deleted Child SA, the IKE SAs INITIAL_CONTACT replaces with their Child SAs
   and lease). If a guard fails the step is not durable (`WriteConflict`): the caller
   forgets it and the client's retransmission is negotiated again, with a fresh SPI or
   address. (An owner the sprayer wrote first is not a conflict: the transaction is
   repeated without it.)
2. after an IKE SA rekey: the owner (same node, same epoch) and the lease follow the new id;
3. owners (`assign/`) of removed IKE SAs in a later transaction, so that no watcher sees a
   client with Child SAs but without an owner.

Removals no reply waits for — a DELETE is answered at once, an expiry answers nothing —
ride with the next transaction keyd writes anyway (`defer`), or go on their own a moment
later (`flush_removals`): a handshake followed by its DELETE costs one round trip, not two.
Until then the deleted IKE SA is not continued from its stale record (`removing`).

Only when the write returns may a step's datagrams be sent. Any StoreError propagates: the
caller withholds the reply. Removals that fail are kept and retried (`retry_removals`): a
stale record costs nothing while the data it describes is gone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cluster.plan import NodeState, NodeView, candidates, choose
from cluster.store.client import TXN_MAX_OPS, Guard, Store
from cluster.store.errors import StoreError
from cluster.store.records import Assignment, ChildSaRecord, IkeSaRecord, NodeRecord, Record

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
    virtual_ip6: str | None = None


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
        """True when the step creates, moves or removes SAs (not just a message-ID
        advance)."""
        return bool(self.new_children or self.deleted_children or self.deleted_ike
                    or self.rekeyed or self.leases or self.moved_children)


@dataclass(slots=True)
class _Removals:
    """Keys to delete now, owners (assign/) to delete in a later revision, and the leases
    (address, IKE SA) among the keys."""

    keys: list[str] = field(default_factory=list)
    owners: list[str] = field(default_factory=list)
    released: list[tuple[str, str]] = field(default_factory=list)


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
        self._riders: list[Changes] = []      # answered removals for the next transaction
        self._removing: set[str] = set()      # IKE SAs among them
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
        """Make several steps durable at once (group commit): the state of every step whose
        keys do not overlap goes into one transaction (up to TXN_MAX_OPS operations) with
        the removals those steps made, instead of a round trip per step. The first
        transaction also carries what waits for a ride: removals of answered DELETEs
        (`defer`) and owners of IKE SAs removed in an earlier revision. Owners of IKE SAs
        removed now wait for the next transaction (a later revision, as they must).
        Returns per step None (durable) or the StoreError that kept it from being durable.
        A lost guard in a shared transaction does not fail the others: that group is
        written again step by step, which names the step whose guard lost. A step with an
        IKE SA rekey is written on its own (`write`)."""
        results: list[StoreError | None] = [None] * len(batch)
        simple = [i for i, c in enumerate(batch) if not c.rekeyed]
        claimed = frozenset(c.lease.ip for ch in batch for c in ch.leases)
        riders, self._riders = self._riders, []
        owners_due, self._owners_due = self._owners_due, []
        extra: _Removals | None = None   # the riders' keys, once a transaction may take them
        carried = False   # riders and due owners written
        for group in self._groups(batch, simple):
            changes = [batch[i] for i in group]
            if extra is None:
                extra = self._removals(riders, claimed) if riders else _Removals()
            own = self._removals(changes, claimed)
            ops = sum(len(c.state_records()) + len(c.established) for c in changes)
            ops += len(own.keys)
            carry = not carried and ops + len(owners_due) + len(extra.keys) <= TXN_MAX_OPS
            deletes = owners_due + extra.keys + own.keys if carry else own.keys
            try:
                ok = self._write_states(changes, deletes)
            except StoreError as exc:
                for i in group:
                    results[i] = exc
                continue
            if ok:
                self._removed(own)
                if carry:
                    self._removed(extra)
                    carried = True
                continue
            for i in group:   # someone's guard lost: find whose
                mine = self._removals([batch[i]], claimed)
                try:
                    self._write_state(batch[i], mine.keys)
                except StoreError as exc:
                    results[i] = exc
                else:
                    self._removed(mine)
        if not carried:   # no transaction took them: the next one will (or the timer's)
            self._riders = riders + self._riders
            self._owners_due = owners_due + self._owners_due
        for i, c in enumerate(batch):
            if c.rekeyed:
                try:
                    self.write(c)
                except StoreError as exc:
                    results[i] = exc
        if carried:
            self._removing.difference_update(*(c.deleted_ike for c in riders))
        return results

    # -- removals that ride along -----------------------------------------------------------
    def defer(self, changes: Changes) -> None:
        """Removals no reply waits for (a DELETE is answered at once: nothing it stands for
        has to exist anywhere): they ride with the next transaction keyd writes anyway, or
        go on their own with `flush_removals` a moment later when none comes."""
        self._riders.append(Changes(deleted_children=list(changes.deleted_children),
                                    deleted_ike=dict(changes.deleted_ike)))
        self._removing.update(changes.deleted_ike)

    def removing(self, ike_sa_id: str) -> bool:
        """The IKE SA was deleted here and its removal is not written yet: its record in
        etcd is stale (never continue from it)."""
        return ike_sa_id in self._removing

    @property
    def removals_due(self) -> bool:
        """Removals or owners wait for a transaction to ride with."""
        return bool(self._riders or self._owners_due)

    def flush_removals(self) -> None:
        """Write what waits for a ride now (no other write came along): the removals in
        one transaction, their owners then wait for the next one. StoreError if etcd
        fails (nothing is lost: they wait for the next try)."""
        if not self.removals_due:
            return
        riders, self._riders = self._riders, []
        due, self._owners_due = self._owners_due, []
        try:
            extra = self._removals(riders, frozenset())
            keys = due + extra.keys
            with self.metrics.etcd_write("delete" if extra.keys else "owner"):
                self._delete_chunks(keys)
        except StoreError as exc:
            # etcd is away: tried again (`retry_removals`) once it answers
            log.warning("removal deferred until etcd answers", extra={"error": str(exc)})
            self._pending.append(due + [k for c in riders
                                        for k in self._removal_keys(c, read=False)[0]])
            self._removing.difference_update(*(c.deleted_ike for c in riders))
            raise
        self._removed(extra)
        self._removing.difference_update(*(c.deleted_ike for c in riders))

    def _removals(self, batch: list[Changes], claimed: frozenset[str]) -> _Removals:
        """The keys that `batch` removes (owners apart: a later revision) and the leases
        among them."""
        out = _Removals()
        prefix = self.store.keyspace.kind_prefix("assign")
        seen: set[str] = set()
        for changes in batch:
            if not (changes.deleted_children or changes.deleted_ike):
                continue
            keys, released = self._removal_keys(changes, claimed)
            for k in keys:
                if k in seen:
                    continue
                seen.add(k)
                (out.owners if k.startswith(prefix) else out.keys).append(k)
            out.released += released
        return out

    def _removed(self, done: _Removals) -> None:
        """`done` is written: owners follow with the next transaction; leases are free."""
        self._owners_due += done.owners
        if self.pool is not None:
            for ip, ike_sa_id in done.released:
                self.pool.released(ip, ike_sa_id)

    def _groups(self, batch: list[Changes], indices: list[int]) -> list[list[int]]:
        """Steps whose state writes share one transaction: disjoint keys, at most
        TXN_MAX_OPS operations each."""
        indices = [i for i in indices if batch[i].has_state()]
        if len(indices) <= 1:   # the common case: no keys to compare
            return [indices] if indices else []
        groups: list[list[int]] = [[]]
        keys: set[str] = set()
        ops = 0
        for i in indices:
            c = batch[i]
            mine = {self.store.key_of(r) for r in c.state_records()}
            mine |= {self.store.keyspace.assign(a) for a in c.established}
            if groups[-1] and (mine & keys or ops + len(mine) > TXN_MAX_OPS):
                groups.append([])
                keys, ops = set(), 0
            groups[-1].append(i)
            keys |= mine
            ops += len(mine)
        return groups

    def _state_ops(self, changes: Changes) -> tuple[list[Record], list[Guard], list[LeaseClaim]]:
        puts: list[Record] = list(changes.state_records())
        guards = [Guard(self.store.key_of(c), 0) for c in changes.new_children]
        fresh = [c for c in changes.leases if not c.held]
        guards += [Guard(self.store.key_of(c.lease), c.mod_revision) for c in fresh]
        return puts, guards, fresh

    def _write_states(self, group: list[Changes], deletes: list[str]) -> bool:
        """The state of several steps in one transaction, owners included, and `deletes`;
        False if a guard lost (nothing written)."""
        if len(group) == 1:   # an owner the sprayer wrote first is no conflict
            try:
                self._write_state(group[0], deletes)
            except WriteConflict:
                return False
            return True
        return self._commit_states(group, deletes) is not None

    def _commit_states(self, group: list[Changes], deletes: list[str],
                       with_owners: bool = True) -> int | None:
        """One transaction: the state of `group`'s steps, guarded, their owners if
        `with_owners`, and `deletes`. The revision, or None if a guard lost (nothing
        written)."""
        puts: list[Record] = []
        guards: list[Guard] = []
        fresh: list[LeaseClaim] = []
        owners: list[Assignment] = []
        for c in group:
            p, g, f = self._state_ops(c)
            puts += p
            guards += g
            fresh += f
            if with_owners:
                owners += [a for a in (self._owner(i) for i in sorted(c.established)) if a]
        label = "ike_sa+child_sa" if any(c.new_children for c in group) else "ike_sa"
        deletes = self._not_put(deletes, [*puts, *owners])
        with self.metrics.etcd_write(label):
            revision = self.store.commit_revision(
                puts=[*puts, *owners], deletes=deletes,
                guards=[*guards, *(Guard(self.store.key_of(a), 0) for a in owners)])
        if revision is not None:
            self._written(fresh, owners, revision)
        return revision

    def _not_put(self, deletes: list[str], puts: list[Record]) -> list[str]:
        """`deletes` without the keys the same transaction writes (etcd refuses a
        transaction that names a key twice; what is written anew stays)."""
        if not deletes:
            return deletes
        written = {self.store.key_of(r) for r in puts}
        return [k for k in deletes if k not in written]

    def _written(self, fresh: list[LeaseClaim], owners: list[Assignment],
                 revision: int) -> None:
        if self.pool is not None:
            for c in fresh:
                self.pool.written(c, revision)
        for a in owners:
            log.debug("client assigned", extra={"ike_sa": a.ike_sa_id, "node": a.node})

    def _write_state(self, changes: Changes, deletes: list[str] | None = None) -> None:
        """One step's state, owners included, and `deletes`; WriteConflict if a guard
        lost (nothing written)."""
        revision = self._commit_states([changes], deletes or [])
        if revision is None and changes.established:
            # maybe only an owner was there already (the sprayer was quicker): fine
            revision = self._commit_states([changes], deletes or [], with_owners=False)
        if revision is None:
            what = [f"sa/{c.spi_in:08x}" for c in changes.new_children]
            what += [f"pool/{c.lease.ip}" for c in changes.leases if not c.held]
            raise WriteConflict(f"taken already in the cluster: {', '.join(what)}")

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
        if self.pool is not None:
            for ip in (rekey.virtual_ip, rekey.virtual_ip6):
                if ip:
                    self.pool.transfer(ip, rekey.old, rekey.new)

    # -- removals ---------------------------------------------------------------------------
    def _removal_keys(self, changes: Changes, claimed: frozenset[str] = frozenset(),
                      read: bool = True) -> tuple[list[str], list[tuple[str, str]]]:
        """The keys to delete, and the (address, IKE SA) leases among them — but not the
        leases of `claimed` addresses, just taken over by another IKE SA (a returning
        client's INITIAL_CONTACT gets its old address back). `read`: ask etcd what an IKE
        SA not held in memory had (else: only what is known here)."""
        ks = self.store.keyspace
        keys = [ks.sa(spi) for spi in changes.deleted_children]
        released: list[tuple[str, str]] = []
        for ike_sa_id, last in changes.deleted_ike.items():
            if last is None and read:   # not ours in memory: read what it had
                held = self.store.get(IkeSaRecord, ike_sa_id)
                last = held.record if held else None
            keys += [ks.ike(ike_sa_id), ks.assign(ike_sa_id)]
            if last is not None:
                keys += [ks.sa(spi) for spi in last.child_spis]
                for ip in (last.virtual_ip, last.virtual_ip6):
                    if ip and ip not in claimed:
                        keys.append(ks.pool(ip))
                        released.append((ip, ike_sa_id))
        return list(dict.fromkeys(keys)), released

    def _remove(self, changes: Changes) -> None:
        """The removals of one step now (sa/, ike/, pool/ in one transaction, then the
        owners); deferred and retried if etcd fails."""
        if not (changes.deleted_children or changes.deleted_ike):
            return
        try:
            claimed = frozenset(c.lease.ip for c in changes.leases)
            keys, released = self._removal_keys(changes, claimed)
            self._delete(keys)
            if self.pool is not None:
                for ip, ike_sa_id in released:
                    self.pool.released(ip, ike_sa_id)
        except StoreError as exc:
            log.warning("removal deferred until etcd answers", extra={"error": str(exc)})
            self._pending.append(self._removal_keys(changes, read=False)[0])

    def _delete(self, keys: list[str]) -> None:
        # owners last, in a later revision: a sprayer that sees a client without an owner
        # but with Child SAs assigns it, so the Child SAs must be seen gone first
        prefix = self.store.keyspace.kind_prefix("assign")
        owners = [k for k in keys if k.startswith(prefix)]
        rest = [k for k in keys if not k.startswith(prefix)]
        with self.metrics.etcd_write("delete"):
            self._delete_chunks(rest)
            self._delete_chunks(owners)

    def _delete_chunks(self, keys: list[str]) -> None:
        """Delete `keys` in transactions of up to TXN_MAX_OPS operations."""
        for i in range(0, len(keys), TXN_MAX_OPS):
            self.store.commit(deletes=keys[i:i + TXN_MAX_OPS])

    def retry_removals(self) -> int:
        """Retry removals that failed while etcd was away, and write what waits for a ride;
        return how many are left."""
        if self.removals_due:
            try:
                self.flush_removals()
            except StoreError:
                return len(self._pending)   # etcd is still away
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
        """Removals that failed (etcd away) and wait to be tried again."""
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
