"""One step at a time: feed the IKE core, make what it decided durable, then release replies.

`Engine` is keyd's synchronous middle: the asyncio shell (server.py) hands it each inbound
IKE message and each timer tick on the loop's thread, so the core is never entered twice at
once. For every step:

1. an IKE SA this instance does not hold (unknown responder SPI) is read from `ike/<id>` and
   imported into the core first — this is how a second or restarted keyd continues it;
2. `step` runs the core; its events (which come before the step's datagrams) are collected
   into `persist.Changes`; an address request is answered from the etcd pool;
3. the shell writes the changes of every waiting step at once (`Persister.write_batch`,
   group commit) and hands each result to `settle`, which returns the datagrams that may
   leave now. If etcd fails, every IKE SA the step touched is put back to its last state
   (the last durable one, or the half-open state already answered) and the datagrams are
   dropped: the client retransmits and the negotiation completes once etcd answers.
   (`handle` does all three for one message.)

Two exceptions: the answer to IKE_SA_INIT leaves at once (a half-open IKE SA is written
after it: docs/keyd.md), and liveness checks (an empty INFORMATIONAL) while etcd is away
are answered — only a message ID moves — and their state is written when etcd returns, so
established clients are not cut off by an etcd outage. Before any step, a new IKE_SA_INIT may
be answered without state (`answer_statelessly`): a COOKIE under load, TEMPORARY_FAILURE once
etcd has been away for ETCD_REFUSE_AFTER_S (docs/keyd.md).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Collection
from typing import Any

from cluster.policy import ChildPolicy, bind_policy
from cluster.store.client import Store
from cluster.store.errors import MalformedRecord, StoreError, StoreUnavailable, WrongDataKey
from cluster.store.records import ChildSaRecord, IkeSaRecord, Policy

from .ike import events as ike
from .ike.constants import Notify
from .ike.errors import IkeError, IkeUsageError
from .ike.responder import Responder
from .metrics import KeydMetrics
from .persist import Changes, IkeRekeyed, Persister, WriteConflict
from .pool import AddressPool, PoolExhausted
from .step import (
    EXCHANGES,
    IKE_AUTH,
    IKE_SA_INIT,
    INFORMATIONAL,
    IkeHeader,
    Outbound,
    Step,
    ike_sa_id_of,
)
from .udp import Address, Inbound
from .view import ClusterView

log = logging.getLogger("keyd.engine")

#: once etcd has not taken writes for this long, a new IKE_SA_INIT is refused at once with
#: TEMPORARY_FAILURE (docs/keyd.md, "When etcd is unreachable"); in a shorter blip it is
#: answered, and its IKE_AUTH waits for the write as any other
ETCD_REFUSE_AFTER_S = 2.0


def _round_only(step: Step) -> bool:
    """An IKE_AUTH step that only moves its IKE SA's state on — an EAP round, answered before
    its write (docs/eap.md, "State"): nothing created, established, moved or removed."""
    c = step.changes
    return bool(c.ike_puts) and not step.created and not c.established and \
        not c.completes_something()


def _serialised(state: dict[str, Any]) -> bytes:
    return json.dumps(state, separators=(",", ":")).encode()


def child_record(child: ike.ChildSa, policy: ChildPolicy | None = None) -> ChildSaRecord:
    """The sa/ record of a Child SA the core established (field names are shared), bound to
    traffic policy `policy` (None: none, a full tunnel)."""
    return ChildSaRecord(
        spi_in=child.spi_in, spi_out=child.spi_out, ike_sa_id=child.ike_sa_id,
        encr=child.encr, integ=child.integ, esn=child.esn,
        enc_key_in=child.enc_key_in, integ_key_in=child.integ_key_in,
        enc_key_out=child.enc_key_out, integ_key_out=child.integ_key_out,
        ts_local=list(child.ts_local), ts_remote=list(child.ts_remote),
        peer_addr=child.peer_addr, peer_port=child.peer_port, udp_encap=child.udp_encap,
        virtual_ip=child.virtual_ip, identity=child.identity, created_at=child.created_at,
        soft_lifetime_s=child.soft_lifetime_s, hard_lifetime_s=child.hard_lifetime_s,
        replaces=child.replaces, policy=policy.name if policy else None,
        policy_mode=policy.mode if policy else None,
        policy_allowed=list(policy.allowed) if policy else [],
        policy_denied=list(policy.denied) if policy else [], mobike=child.mobike,
        virtual_ip6=child.virtual_ip6)


class Engine:
    def __init__(self, core: Responder, store: Store, pool: AddressPool | None, keyd_id: str,
                 metrics: KeydMetrics, clock: Callable[[], float] = time.time,
                 view: ClusterView | None = None,
                 pools: dict[str, AddressPool] | None = None) -> None:
        self.core = core
        self.store = store
        self.pool = pool
        # the connections' pools by network (AddressRequested.pool); `pool` serves the rest
        self.pools = dict(pools or {})
        self.keyd_id = keyd_id
        self.metrics = metrics
        self.clock = clock
        self.persister = Persister(store, pool, metrics, clock, view)
        self.view = view
        self.etcd_ok = True
        self._etcd_lost_at = 0.0        # when this outage began, as far as keyd knows
        # last durable state of each IKE SA held: what a failed step is rolled back to
        self._durable: dict[str, dict[str, Any]] = {}
        self._records: dict[str, IkeSaRecord] = {}
        self._dirty: set[str] = set()   # answered while etcd was away; write when it returns
        # etcd revision of the state held, as far as known: older foreign writes are old news
        self._held_revision: dict[str, int] = {}
        # identity → IKE SAs in the cluster (from the ike/ watch): for INITIAL_CONTACT
        self._by_identity: dict[str, set[str]] = {}

    # -- inbound -------------------------------------------------------------------------
    def handle(self, inbound: Inbound) -> list[Outbound]:
        """One step, written on its own before its replies are returned."""
        step = self.step(inbound)
        out = step.release_now()
        if step.needs_write:
            out = out + self.write_now(step)
        return out

    def answer_statelessly(self, data: bytes, src: Address, dst: Address) -> bytes | None:
        """A new IKE_SA_INIT answered without state (a COOKIE, or the refusal once etcd has
        been away for ETCD_REFUSE_AFTER_S): the UDP payload to send back, counted; None: a
        step must run. Nothing is written either way."""
        now = self.clock()
        if not self.etcd_ok and now - self._etcd_lost_at >= ETCD_REFUSE_AFTER_S:
            self.core.refuse_new = Notify.TEMPORARY_FAILURE
        answered = self.core.answer_statelessly(data, src, dst, now)
        if answered is None:
            return None
        if answered[0] == "refused":
            self.metrics.child(self.metrics.refused, "etcd_unavailable").inc()
        return answered[1]

    def step(self, inbound: Inbound, may_wait: bool = False,
             header: IkeHeader | None = None) -> Step:
        """Run the core on one message; nothing is written. `may_wait`: an IKE_AUTH for an
        IKE SA held nowhere is not handed to the core — `waiting_for` names it, and the
        caller tries again a moment later (its IKE_SA_INIT answer may have come from
        another instance whose write of the half-open IKE SA is still on its way).
        `header`: `ike_sa_id_of` of the message, if the caller has read it already."""
        start = time.perf_counter()
        now = self.clock()
        if header is None:
            header = ike_sa_id_of(inbound.data, inbound.ike_offset)
        ike_sa_id, spi_r, exchange, _flags = header
        name = EXCHANGES.get(exchange, "other")
        # unknown here: continue it from etcd if it is there; if not, the core answers or
        # ignores the message as for any unknown SPI (RFC 7296 §2.21.4)
        if spi_r and not self.core.has_ike_sa(ike_sa_id) and \
                not self._continue_from_etcd(ike_sa_id) and may_wait and exchange == IKE_AUTH:
            return Step(exchange=name, waiting_for=ike_sa_id, started=start)
        try:
            self.core.receive_datagram(inbound.data, inbound.src, inbound.dst, now)
        except IkeUsageError as exc:  # a bug of ours, not the peer's
            log.error("IKE core refused the message", extra={"ike_sa": ike_sa_id,
                                                             "error": str(exc)})
            self.metrics.dropped.labels("core_error").inc()
            return Step(exchange=name, started=start)
        try:
            step = self._collect(now, lazy=exchange == IKE_SA_INIT)
        except StoreError as exc:   # the pool had to ask etcd, which did not answer
            self._etcd_lost(exc)
            while self.core.next_event() is not None:
                pass
            self.core.datagrams_to_send()
            self._roll_back(ike_sa_id)
            self.metrics.not_persisted.inc()
            return Step(exchange=name, started=start)
        step.exchange, step.started = name, start
        step.out = [Outbound(d.data, d.src[1], d.dst) for d in self.core.datagrams_to_send()]
        step.liveness_only = (exchange == INFORMATIONAL
                              and not step.changes.completes_something() and not step.created)
        self._defer_removals(step)
        if exchange == IKE_SA_INIT and step.created and not step.changes.completes_something():
            # A half-open IKE SA is answered at once and written right after (docs/keyd.md):
            # what a later step that fails returns to is this state, durable or not.
            step.half_open = True
            for ike_sa_id in step.created:
                record = step.changes.ike_puts.get(ike_sa_id)
                if record is not None:
                    self._remember(ike_sa_id, record, step.states.get(ike_sa_id))
        else:
            self.complete(step)
            if exchange == IKE_AUTH and _round_only(step):
                self._answering_first(step)
        if not step.needs_write or step.answered_before_write:
            self._observe(step)
        return step

    def radius_answer(self, ike_sa_id: str, datagram: bytes | None) -> Step | None:
        """A RADIUS server's answer to a RadiusRequested (None: it never came). None back:
        the datagram did not verify and was dropped, the IKE SA still waits; else the step
        it made (the IKE_AUTH answer, to write and send as any step's)."""
        start = time.perf_counter()
        now = self.clock()
        if not self.core.has_ike_sa(ike_sa_id):
            return Step(exchange="IKE_AUTH", started=start)  # gone meanwhile: nothing to do
        try:
            if not self.core.radius_answer(ike_sa_id, datagram, now):
                self.metrics.dropped.labels("radius_unverified").inc()
                return None
        except IkeUsageError as exc:   # not waiting any more (deleted, continued elsewhere)
            log.info("RADIUS answer for an IKE SA not waiting for it",
                     extra={"ike_sa": ike_sa_id, "error": str(exc)})
            return Step(exchange="IKE_AUTH", started=start)
        step = self._collect(now)
        step.exchange, step.started = "IKE_AUTH", start
        step.out = [Outbound(d.data, d.src[1], d.dst) for d in self.core.datagrams_to_send()]
        self._defer_removals(step)
        self.complete(step)
        if _round_only(step):
            self._answering_first(step)
        if not step.needs_write or step.answer_first:
            self._observe(step)
        return step

    def _answering_first(self, step: Step) -> None:
        """An EAP round is answered before its write (docs/eap.md): what a later step that
        fails returns to is the state answered, durable or not (as for a half-open IKE SA)."""
        step.answer_first = True
        for ike_sa_id, record in step.changes.ike_puts.items():
            self._remember(ike_sa_id, record, step.states.get(ike_sa_id))

    def write_now(self, step: Step) -> list[Outbound]:
        """Write one step's changes (blocking) and settle it."""
        self.complete(step)
        [error] = self.persister.write_batch([step.changes])
        return self.settle(step, error)

    def _defer_removals(self, step: Step) -> None:
        """A step that only removes (a DELETE, an expiry) is answered at once: nothing its
        answer stands for must exist anywhere. Its removals ride with the next write
        (`Persister.defer`); the IKE SAs it deleted are forgotten now, and not continued
        from their stale records meanwhile."""
        c = step.changes
        if c.has_state() or c.rekeyed or not (c.deleted_children or c.deleted_ike):
            return
        self.persister.defer(c)
        for ike_sa_id in c.deleted_ike:
            self._forget(ike_sa_id)
        step.changes = Changes()

    def settle(self, step: Step, error: StoreError | None) -> list[Outbound]:
        """The step's write is done (`error` None) or failed: remember what is durable, or
        roll back; return the datagrams that may leave now."""
        try:
            if error is None:
                return self._durable_now(step)
            return self._not_durable(step, error)
        finally:
            if not step.answered_before_write:
                self._observe(step)

    def _observe(self, step: Step) -> None:
        self.metrics.child(self.metrics.step_seconds, step.exchange).observe(
            time.perf_counter() - step.started)

    def tick(self) -> list[Outbound]:
        """The core's timers (retransmits, expiry): persist what they changed, best effort."""
        now = self.clock()
        self.core.handle_timer(now)
        step = self._collect(now)
        step.out = [Outbound(d.data, d.src[1], d.dst) for d in self.core.datagrams_to_send()]
        step.liveness_only = True
        self._defer_removals(step)
        out = self.write_now(step) if step.needs_write else step.out
        self.metrics.ike_sas.set(len(self._durable))
        return out

    def next_timer(self) -> float | None:
        return self.core.get_timer()

    def redirect(self, ike_sa_id: str, gateway: str) -> list[Outbound] | None:
        """Ask an established client to move to `gateway` (RFC 5685 §5), continuing its IKE
        SA from etcd if another instance wrote it; the request's state is written before
        it leaves. None: no such IKE SA. IkeUsageError: the client cannot be
        redirected, or an exchange of ours is in flight on it. StoreError propagates."""
        now = self.clock()
        if not self.core.has_ike_sa(ike_sa_id) and not self._continue_from_etcd(ike_sa_id):
            return None
        self.core.redirect(ike_sa_id, gateway, now)
        step = self._collect(now)
        step.exchange = "INFORMATIONAL"
        step.out = [Outbound(d.data, d.src[1], d.dst) for d in self.core.datagrams_to_send()]
        return self.write_now(step)

    # -- events → changes ----------------------------------------------------------------
    def _collect(self, now: float, lazy: bool = False) -> Step:
        step = Step()
        while (event := self.core.next_event()) is not None:
            self._event(event, step, now)
        # the records of the IKE SAs the step updated, built once each, from their final
        # state (a DELETE updates an IKE SA and then removes it: no record at all); `lazy`:
        # their sealed state is serialised only if they are written (`complete`)
        for ike_sa_id in step.updated:
            if self.core.has_ike_sa(ike_sa_id):
                state = self.core.export_ike_sa(ike_sa_id)
                step.states[ike_sa_id] = state
                step.changes.ike_puts[ike_sa_id] = self._record_of(ike_sa_id, state, now, lazy)
        self.metrics.sync_core_counters(self.core.counters)
        return step

    def complete(self, step: Step) -> None:
        """Serialise the state of records built lazily (a half-open IKE SA is written only
        when its IKE_AUTH does not come first: most never are)."""
        puts = step.changes.ike_puts
        for ike_sa_id, record in puts.items():
            if not record.state:
                puts[ike_sa_id] = dataclasses.replace(record, state=_serialised(
                    step.states[ike_sa_id]))

    def _policies(self) -> tuple[dict[str, Policy], frozenset[str]]:
        """policy/ by name (last valid versions) and the names now malformed: from the view
        once it has read policy/, else from etcd."""
        if self.view is not None and self.view.policies_synced:
            return self.view.policies()
        try:
            listing = self.store.list(Policy)
        except StoreError as e:  # the Child SA's own write fails the same way: retried
            log.warning("cannot read policy/: %s", e)
            return {}, frozenset()
        bad = frozenset(m.key.rsplit("/", 1)[-1] for m in listing.malformed)
        return {v.record.name: v.record for v in listing.items}, bad

    def child_record(self, child: ike.ChildSa, policy: str | None = None) -> ChildSaRecord:
        """The sa/ record of `child`, bound to the traffic policy `policy` names (a
        connection's `policy`), else to the first policy whose identities match the client's
        (cluster.policy.binding), else to none."""
        policies, unusable = self._policies()
        bound = bind_policy(policy, child.identity, policies, unusable)
        if bound is not None and bound.mode is None:
            log.warning("Child SA %08x of %s bound to policy %r, which is missing or "
                        "malformed in policy/: the nodes drop its traffic until it is written",
                        child.spi_in, child.identity, bound.name)
        return child_record(child, bound)

    def _event(self, event: ike.IkeEvent, step: Step, now: float) -> None:
        c = step.changes
        if isinstance(event, ike.AddressRequested):
            self._assign_address(event, step, now)
        elif isinstance(event, ike.RadiusRequested):
            step.radius.append(event)
        elif isinstance(event, ike.IkeSaUpdated):
            ike_sa_id = event.ike_sa_id
            if ike_sa_id not in self._durable:
                step.created.add(ike_sa_id)
            step.touched.add(ike_sa_id)
            step.updated[ike_sa_id] = None
        elif isinstance(event, ike.ChildSaEstablished):
            c.new_children.append(self.child_record(event.child, policy=event.child.policy))
            step.touched.add(event.child.ike_sa_id)
        elif isinstance(event, ike.ChildSaDeleted):
            c.deleted_children.append(event.spi_in)
        elif isinstance(event, ike.IkeSaRekeyed):
            old = self._records.get(event.old_ike_sa_id)
            c.moved_children.extend(self.child_record(child, policy=child.policy)
                                    for child in event.children)
            c.rekeyed.append(IkeRekeyed(event.old_ike_sa_id, event.new_ike_sa_id,
                                        old.virtual_ip if old else None,
                                        old.virtual_ip6 if old else None))
            if old is not None and old.identity:
                self._by_identity.setdefault(old.identity, set()).add(event.new_ike_sa_id)
            step.touched.add(event.old_ike_sa_id)
            if old is not None:
                # its Child SAs and address now belong to the new IKE SA: deleting the old
                # one later must not take them along
                self._records[event.old_ike_sa_id] = dataclasses.replace(
                    old, child_spis=[], virtual_ip=None, virtual_ip6=None)
        elif isinstance(event, ike.IkeSaMoved):
            # MOBIKE: the Child SAs' new address goes with the IKE SA state, in the step's
            # one transaction (the nodes switch their ESP when they see it)
            c.moved_children.extend(self.child_record(child, policy=child.policy)
                                    for child in event.children)
            step.touched.add(event.ike_sa_id)
            log.info("client moved (MOBIKE)", extra={
                "ike_sa": event.ike_sa_id, "peer": f"{event.peer_addr}:{event.peer_port}"})
        elif isinstance(event, ike.Redirected):
            log.info("client redirected", extra={
                "ike_sa": event.ike_sa_id, "gateway": event.gateway, "during": event.during})
        elif isinstance(event, ike.IkeSaDeleted):
            ike_sa_id = event.ike_sa_id
            self.seen_ike_sa_deleted(ike_sa_id)
            c.deleted_ike[ike_sa_id] = self._records.get(ike_sa_id)
            step.updated.pop(ike_sa_id, None)
            step.touched.discard(ike_sa_id)
            log.info("IKE SA deleted", extra={"ike_sa": ike_sa_id, "reason": event.reason})
        elif isinstance(event, ike.IkeSaEstablished):
            c.established.add(event.ike_sa_id)
            self._by_identity.setdefault(event.identity, set()).add(event.ike_sa_id)
            if event.initial_contact:
                self._initial_contact(event, step)
            log.info("IKE SA established", extra={
                "ike_sa": event.ike_sa_id, "identity": event.identity,
                "peer": f"{event.peer_addr}:{event.peer_port}",
                "virtual_ip": event.virtual_ip or "-", "virtual_ip6": event.virtual_ip6 or "-",
                "connection": event.connection or "-"})
        elif isinstance(event, ike.AuthenticationFailed):
            # the identity claimed and why: never the secret (docs/configuration.md)
            log.warning("authentication failed", extra={
                "ike_sa": event.ike_sa_id, "identity": event.identity, "cause": event.cause,
                "connection": event.connection or "-", "reason": event.reason})

    def _assign_address(self, event: ike.AddressRequested, step: Step, now: float) -> None:
        """An address of each family the client asks for, from its connection's pools (the
        IPv4 one by default `pool`; IPv6 only from a `pool6`)."""
        address = self._lease(event, step, self.pools.get(event.pool or "", self.pool),
                              event.requested) if event.ipv4 else None
        address6 = self._lease(event, step, self.pools.get(event.pool6 or ""),
                               event.requested6) if event.ipv6 else None
        self.core.assign_address(event.ike_sa_id, address, now, address6)

    def _lease(self, event: ike.AddressRequested, step: Step, pool: AddressPool | None,
               requested: str | None) -> str | None:
        """Claim an address of `pool` for the client; None: no pool, or it is full."""
        if pool is None:
            return None
        try:
            claim = pool.claim(event.ike_sa_id, event.identity, requested,
                               initial_contact=event.initial_contact)
        except PoolExhausted as exc:
            log.warning("no address for client", extra={"ike_sa": event.ike_sa_id,
                                                         "error": str(exc)})
            self.metrics.pool_exhausted.inc()
            return None
        # StoreError propagates: the step is rolled back, the client's retransmit asks again.
        # The lease is written with the IKE SA, in the step's one transaction.
        step.changes.leases.append(claim)
        return claim.lease.ip

    # -- records ---------------------------------------------------------------------------
    def _ike_record(self, ike_sa_id: str, now: float) -> tuple[IkeSaRecord, dict[str, Any]]:
        """The ike/ record of an IKE SA the core holds, and its exported state."""
        state = self.core.export_ike_sa(ike_sa_id)
        return self._record_of(ike_sa_id, state, now), state

    def _record_of(self, ike_sa_id: str, state: dict[str, Any], now: float,
                   lazy: bool = False) -> IkeSaRecord:
        """The ike/ record of an exported IKE SA state: the state, sealed at rest (empty
        until `complete` if `lazy`), plus the clear fields operators and other components
        read."""
        # an IKE SA replaced by a rekey has handed its address and Child SAs to the new one:
        # its record must not claim them (deleting it later must not take them along)
        replaced = bool(state.get("rekeyed_to"))
        return IkeSaRecord(
            ike_sa_id=ike_sa_id, spi_i=int(state["spi_i"], 16), spi_r=int(state["spi_r"], 16),
            peer_addr=str(state["peer"][0]), peer_port=int(state["peer"][1]),
            local_port=int(state["local"][1]), identity=str(state.get("peer_identity") or ""),
            virtual_ip=None if replaced else state.get("virtual_ip"),
            virtual_ip6=None if replaced else state.get("virtual_ip6"),
            child_spis=[] if replaced else [int(c["spi_in"]) for c in state.get("children", [])],
            keyd_id=self.keyd_id, updated_at=now, state=b"" if lazy else _serialised(state))

    # -- commit or roll back ---------------------------------------------------------------
    def _durable_now(self, step: Step) -> list[Outbound]:
        self._etcd_back()
        for ike_sa_id, record in step.changes.ike_puts.items():
            self._remember(ike_sa_id, record, step.states.get(ike_sa_id))
            self._dirty.discard(ike_sa_id)
        for ike_sa_id in step.changes.deleted_ike:
            self._forget(ike_sa_id)
        return [] if step.answered_before_write else step.out

    def _not_durable(self, step: Step, exc: StoreError) -> list[Outbound]:
        if isinstance(exc, WriteConflict):
            log.warning("SPI or address taken meanwhile; the client's retransmission is "
                        "negotiated again",
                        extra={"error": str(exc)})
        else:
            self._etcd_lost(exc)
        if step.half_open:
            # answered already; written when etcd returns (or with its IKE_AUTH)
            self._dirty.update(i for i in step.created if self.core.has_ike_sa(i))
            return []
        if step.answer_first:   # answered already
            if isinstance(exc, WriteConflict):
                # another instance wrote the IKE SA meanwhile: what etcd holds is the truth,
                # read again with the client's next message
                for ike_sa_id in step.changes.ike_puts:
                    self.core.forget_ike_sa(ike_sa_id)
                    self._forget(ike_sa_id)
            else:
                # the conversation goes on here, from memory; its state is written when etcd
                # returns (the round that completes the IKE SA waits for it)
                self._dirty.update(step.changes.ike_puts)
            return []
        if step.liveness_only and not isinstance(exc, WriteConflict):
            # only message IDs moved: answer now, write when etcd returns
            self._dirty.update(step.changes.ike_puts)
            return step.out
        for ike_sa_id in step.touched | set(step.changes.ike_puts):
            self._roll_back(ike_sa_id)
        self.metrics.not_persisted.inc(len(step.out) or 1)
        if step.created or step.changes.established:
            self.metrics.handshakes.labels("not_persisted").inc()
        return []

    def _roll_back(self, ike_sa_id: str) -> None:
        self.core.forget_ike_sa(ike_sa_id)
        state = self._durable.get(ike_sa_id)
        if state is not None:
            self.core.import_ike_sa(state)

    def _remember(self, ike_sa_id: str, record: IkeSaRecord,
                  state: dict[str, Any] | None = None) -> None:
        self._durable[ike_sa_id] = json.loads(record.state) if state is None else state
        self._records[ike_sa_id] = record

    def _forget(self, ike_sa_id: str) -> None:
        self._held_revision.pop(ike_sa_id, None)
        self._durable.pop(ike_sa_id, None)
        self._records.pop(ike_sa_id, None)
        self._dirty.discard(ike_sa_id)

    # -- continuing an IKE SA another instance wrote ----------------------------------------
    def _continue_from_etcd(self, ike_sa_id: str) -> bool:
        if self.persister.removing(ike_sa_id):
            return False   # deleted here; its record is on its way out
        try:
            held = self.store.get(IkeSaRecord, ike_sa_id)
        except (MalformedRecord, WrongDataKey) as exc:
            log.warning("unusable IKE SA record skipped", extra={"ike_sa": ike_sa_id,
                                                                 "error": str(exc)})
            self.metrics.dropped.labels("bad_ike_record").inc()
            return False
        except StoreError as exc:
            self._etcd_lost(exc)
            return False
        self._etcd_back()
        if held is None:
            return False
        try:
            state = json.loads(held.record.state)
            self.core.import_ike_sa(state)
        except (ValueError, KeyError, TypeError, IkeError) as exc:
            log.warning("IKE SA state in etcd does not import", extra={
                "ike_sa": ike_sa_id, "error": str(exc)})
            self.metrics.dropped.labels("bad_ike_state").inc()
            return False
        self._remember(ike_sa_id, held.record)
        self._held_revision[ike_sa_id] = held.mod_revision
        self.metrics.imported.inc()
        log.info("continuing IKE SA from etcd", extra={
            "ike_sa": ike_sa_id, "written_by": held.record.keyd_id})
        return True

    def seen_ike_sa(self, record: IkeSaRecord, revision: int) -> None:
        """An ike/ record as etcd has it at `revision` (from the watch). If another
        instance wrote an IKE SA this one holds, after the state held here, the local copy
        is stale: drop it (it is read again from etcd if the client comes back here)."""
        ike_sa_id = record.ike_sa_id
        if record.identity:
            self._by_identity.setdefault(record.identity, set()).add(ike_sa_id)
        if record.keyd_id == self.keyd_id:
            self._held_revision[ike_sa_id] = max(self._held_revision.get(ike_sa_id, 0),
                                                 revision)
            return
        # a write older than what is held (e.g. the one it was imported from) says nothing
        if self.core.has_ike_sa(ike_sa_id) and revision > self._held_revision.get(ike_sa_id, 0):
            self.core.forget_ike_sa(ike_sa_id)
            self._forget(ike_sa_id)
            log.info("IKE SA continued by another instance", extra={
                "ike_sa": ike_sa_id, "by": record.keyd_id})

    def seen_ike_sa_deleted(self, ike_sa_id: str) -> None:
        record = self._records.get(ike_sa_id)
        if record is not None and record.identity:
            ids = self._by_identity.get(record.identity, set())
            ids.discard(ike_sa_id)
            if not ids:
                self._by_identity.pop(record.identity, None)
            return
        for identity, ids in list(self._by_identity.items()):
            ids.discard(ike_sa_id)
            if not ids:
                del self._by_identity[identity]

    def swept(self, gone: list[str]) -> None:
        """The sweeper (persist.Persister.sweep_expired) removed these IKE SAs: forget them."""
        for ike_sa_id in gone:
            self.seen_ike_sa_deleted(ike_sa_id)
            if self.core.has_ike_sa(ike_sa_id):
                self.core.forget_ike_sa(ike_sa_id)
            self._forget(ike_sa_id)

    def _initial_contact(self, event: ike.IkeSaEstablished, step: Step) -> None:
        """RFC 7296 §2.4: INITIAL_CONTACT — the peer has no other IKE SA with us any more;
        remove every older one of the same identity (a client that restarted), with its
        Child SAs, owner and address, wherever in the cluster it was negotiated."""
        others = self._by_identity.get(event.identity, set()) - {event.ike_sa_id}
        for other in sorted(others):
            if other in step.updated or other in step.changes.deleted_ike:
                continue
            step.changes.deleted_ike[other] = self._records.get(other)
            self.seen_ike_sa_deleted(other)
            if self.core.has_ike_sa(other):
                self.core.forget_ike_sa(other)
            self._forget(other)
            log.info("older IKE SA of a returning client removed (INITIAL_CONTACT)", extra={
                "ike_sa": other, "identity": event.identity, "by": event.ike_sa_id})

    # -- etcd availability -----------------------------------------------------------------
    def etcd_silent(self, silent_s: float) -> None:
        """etcd has not answered for `silent_s` (keyd's lease was lost): an outage that
        began then, as if a write had failed."""
        silent = StoreUnavailable(self.store.endpoint, f"silent for {silent_s:g}s (lease lost)")
        self._etcd_lost(silent, since=self.clock() - silent_s)

    def _etcd_lost(self, exc: StoreError, since: float | None = None) -> None:
        if self.etcd_ok:
            self.etcd_ok = False
            self._etcd_lost_at = self.clock() if since is None else since
            self.metrics.etcd_available.set(0)
            self.metrics.etcd_outages.inc()
            level = logging.ERROR if isinstance(exc, StoreUnavailable) else logging.WARNING
            log.log(level, "etcd does not take writes: not completing negotiations until it "
                    "does, refusing new ones after %gs; established SAs are not affected",
                    ETCD_REFUSE_AFTER_S, extra={"error": str(exc)})

    def _etcd_back(self) -> None:
        if not self.etcd_ok:
            self.etcd_ok = True
            self.core.refuse_new = None
            self.metrics.etcd_available.set(1)
            log.info("etcd takes writes again: serving")

    def use_store(self, store: Store) -> None:
        """Continue on another connection to the same etcd (after an outage)."""
        self.store = store
        self.persister.store = store
        for pool in {id(p): p for p in (self.pool, *self.pools.values()) if p}.values():
            pool.store = store

    def flush(self, busy: Collection[str] = ()) -> None:
        """After an outage: write IKE SAs answered meanwhile (but those a step in flight
        is writing anyway: `busy`), retry deferred removals."""
        now = self.clock()
        for ike_sa_id in sorted(self._dirty - set(busy)):
            if not self.core.has_ike_sa(ike_sa_id):
                self._dirty.discard(ike_sa_id)
                continue
            record, state = self._ike_record(ike_sa_id, now)
            self.persister.write(Changes(ike_puts={ike_sa_id: record}))
            self._remember(ike_sa_id, record, state)
            self._dirty.discard(ike_sa_id)
        self.persister.retry_removals()
        self._etcd_back()

    @property
    def needs_flush(self) -> bool:
        return bool(self._dirty) or self.persister.pending_removals > 0
