"""What keyd writes to etcd, and in which order, before a reply may leave.

A `Changes` collects what one step of the IKE core did (IKE SAs updated, Child SAs created or
deleted, IKE SAs deleted or rekeyed). `Persister.write` makes it durable:

1. one transaction: every updated `ike/<id>` (sealed state), every new `sa/<spi_in>` (sealed
   keys) and every Child SA an IKE rekey moved; each new SA is guarded by create-if-absent,
   which is what makes inbound SPIs cluster-unique: a collision fails the whole step
   (`SpiCollision`), the caller forgets the step and the client's retransmission is
   negotiated again with a fresh SPI;
2. the client's owner: `assign/<ike_sa_id>` create-if-absent, epoch 1, the node chosen by the
   planner's rendezvous hash over ready nodes (no ready node: left to the sprayer);
3. removals: `sa/` of deleted Child SAs; for a deleted IKE SA its `ike/`, `assign/`, remaining
   `sa/` and its pool lease.

Only when `write` returns may the step's datagrams be sent. Any StoreError propagates: the
caller withholds the reply. Removals that fail are kept and retried (`retry_removals`): a
stale record costs nothing while the data it describes is gone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cluster.store.client import Guard, Store
from cluster.store.errors import StoreError
from cluster.store.records import Assignment, ChildSaRecord, IkeSaRecord, NodeRecord
from sprayer.plan import NodeState, NodeView, candidates, choose

from .metrics import KeydMetrics
from .pool import AddressPool

log = logging.getLogger("keyd.persist")


class SpiCollision(StoreError):
    """An inbound SPI chosen for a new Child SA is already in sa/ (another instance has it)."""


@dataclass(slots=True)
class IkeRekeyed:
    """IKE SA `old` was replaced by `new` (RFC 7296 §2.18): its Child SAs, owner and address
    move to the new IKE SA id."""

    old: str
    new: str
    virtual_ip: str | None = None


@dataclass(slots=True)
class Changes:
    """Everything one step of the core asks to make durable."""

    ike_puts: dict[str, IkeSaRecord] = field(default_factory=dict)
    new_children: list[ChildSaRecord] = field(default_factory=list)
    moved_children: list[ChildSaRecord] = field(default_factory=list)  # new ike_sa_id
    deleted_children: list[int] = field(default_factory=list)
    deleted_ike: dict[str, IkeSaRecord | None] = field(default_factory=dict)
    rekeyed: list[IkeRekeyed] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.ike_puts or self.new_children or self.deleted_children
                    or self.deleted_ike or self.rekeyed)

    def completes_something(self) -> bool:
        """True when the step creates or removes SAs (not just a message-ID advance)."""
        return bool(self.new_children or self.deleted_children or self.deleted_ike
                    or self.rekeyed)


@dataclass(slots=True)
class _Removal:
    kind: str                 # "sa" | "ike"
    name: str | int
    ike_sa_id: str = ""
    virtual_ip: str | None = None


class Persister:
    def __init__(self, store: Store, pool: AddressPool | None, metrics: KeydMetrics,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.pool = pool
        self.metrics = metrics
        self.clock = clock
        self._pending: list[_Removal] = []

    # -- the ordered write ------------------------------------------------------------------
    def write(self, changes: Changes) -> None:
        """Make `changes` durable in the order of the module docstring; raise StoreError."""
        if changes.ike_puts or changes.new_children or changes.moved_children:
            self._write_state(changes)
        for rekey in changes.rekeyed:
            self._move_owner(rekey)
        owners = {c.ike_sa_id for c in changes.new_children}
        for ike_sa_id in sorted(owners):
            self._assign(ike_sa_id)
        for spi in changes.deleted_children:
            self._remove(_Removal("sa", spi))
        for ike_sa_id, last in changes.deleted_ike.items():
            self._remove_ike(ike_sa_id, last)

    def _write_state(self, changes: Changes) -> None:
        puts = [*changes.ike_puts.values(), *changes.new_children, *changes.moved_children]
        guards = [Guard(self.store.key_of(c), 0) for c in changes.new_children]
        with self.metrics.etcd_write("ike_sa+child_sa" if changes.new_children else "ike_sa"):
            ok = self.store.commit(puts=puts, guards=guards)
        if not ok:
            spis = ", ".join(f"{c.spi_in:08x}" for c in changes.new_children)
            raise SpiCollision(f"inbound SPI already in use in the cluster: {spis}")

    def _assign(self, ike_sa_id: str) -> None:
        nodes = [NodeView(n.record.id, float(n.record.capacity), NodeState(n.record.state))
                 for n in self.store.list(NodeRecord).items]
        node = choose(ike_sa_id, candidates(nodes))
        if node is None:
            log.warning("no ready node to own the client; the sprayer will assign it",
                        extra={"ike_sa": ike_sa_id})
            return
        record = Assignment(ike_sa_id=ike_sa_id, node=node, epoch=1, phase="active",
                            previous_node=None, updated_at=self.clock())
        with self.metrics.etcd_write("assignment"):
            created = self.store.create(record)
        if created:
            log.info("client assigned", extra={"ike_sa": ike_sa_id, "node": node})

    def _move_owner(self, rekey: IkeRekeyed) -> None:
        """After an IKE SA rekey the client keeps its Child SAs, its owner (same node, same
        epoch) and its address under the new IKE SA id; the old id's records go with it."""
        old = self.store.get(Assignment, rekey.old)
        if old is not None:
            moved = Assignment(ike_sa_id=rekey.new, node=old.record.node, epoch=old.record.epoch,
                               phase=old.record.phase, previous_node=old.record.previous_node,
                               updated_at=self.clock())
            with self.metrics.etcd_write("assignment"):
                self.store.commit(puts=[moved], guards=[Guard(self.store.key_of(moved), 0)])
        if self.pool is not None and rekey.virtual_ip:
            self.pool.transfer(rekey.virtual_ip, rekey.old, rekey.new)

    # -- removals ---------------------------------------------------------------------------
    def _remove_ike(self, ike_sa_id: str, last: IkeSaRecord | None) -> None:
        for spi in (last.child_spis if last else []):
            self._remove(_Removal("sa", spi, ike_sa_id))
        self._remove(_Removal("ike", ike_sa_id, ike_sa_id,
                              last.virtual_ip if last else None))

    def _remove(self, removal: _Removal) -> None:
        try:
            self._do_remove(removal)
        except StoreError as exc:
            log.warning("removal deferred until etcd answers",
                        extra={"what": f"{removal.kind}/{removal.name}", "error": str(exc)})
            self._pending.append(removal)

    def _do_remove(self, removal: _Removal) -> None:
        if removal.kind == "sa":
            assert isinstance(removal.name, int)
            if removal.ike_sa_id:
                # only while it still belongs to that IKE SA (an IKE rekey re-parents it)
                held = self.store.get(ChildSaRecord, removal.name)
                if held is None or held.record.ike_sa_id != removal.ike_sa_id:
                    return
                with self.metrics.etcd_write("delete"):
                    self.store.delete_if(ChildSaRecord, removal.name, held.mod_revision)
                return
            with self.metrics.etcd_write("delete"):
                self.store.delete(ChildSaRecord, removal.name)
            return
        ike_sa_id = str(removal.name)
        with self.metrics.etcd_write("delete"):
            self.store.commit(deletes=[self.store.keyspace.ike(ike_sa_id),
                                       self.store.keyspace.assign(ike_sa_id)])
        if self.pool is not None:
            if removal.virtual_ip:
                self.pool.release(removal.virtual_ip, ike_sa_id)
            else:
                self.pool.release_ike_sa(ike_sa_id)

    def retry_removals(self) -> int:
        """Retry removals that failed while etcd was away; return how many are left."""
        pending, self._pending = self._pending, []
        for i, removal in enumerate(pending):
            try:
                self._do_remove(removal)
            except StoreError:
                self._pending.extend(pending[i:])
                break
        return len(self._pending)

    @property
    def pending_removals(self) -> int:
        return len(self._pending)

    # -- expiry of IKE SAs nobody holds -----------------------------------------------------
    def sweep_expired(self, max_age_s: float) -> list[str]:
        """Remove IKE SAs (and their Child SAs, owner and address) not updated for
        `max_age_s`: left behind by an instance that died, for a client that never returned.
        Any live IKE SA is updated at least once per lifetime (rekey or reauthentication)."""
        now = self.clock()
        gone: list[str] = []
        for v in self.store.list(IkeSaRecord).items:
            record = v.record
            if now - record.updated_at < max_age_s:
                continue
            # compare-and-delete: an instance that just continued it wins
            if self.store.delete_if(IkeSaRecord, record.ike_sa_id, v.mod_revision):
                self._remove_ike(record.ike_sa_id, record)
                gone.append(record.ike_sa_id)
                self.metrics.swept.inc()
        return gone
