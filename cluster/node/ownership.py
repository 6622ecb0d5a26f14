"""Which clients this node sends for, and how a client moves to it and away from it.

Sans-I/O, as keyd/ike is: `Ownership.handle(event, now)` takes a `NodeEvent` (what etcd's
watches said, what the shell's etcd reads and writes came back with, a READY, the lease) and
`handle_timer(now)` runs what is due (`get_timer()` says when); both answer with the
`NodeAction`s the shell carries out, in order (cluster.node.events). No sockets, no threads,
no clock, no etcd: the same logic drives the userspace data plane and the kernel's.

A client is an IKE SA and its Child SAs; on this node it is in one `ClientState`, and
TRANSITIONS below is every change of that state (`advance` is the only way one happens).
Addresses are routed to the TUN while a client is ours (`OURS`), reference-counted over the
clients that share one; a planned hand-off away keeps them routed here until the final record
is written, then routes them to the new owner for `FORWARD_S` (cluster.node.handoff).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from cluster.esp import SaCounters
from cluster.node.counters import Checkpointer, Traffic, take_over
from cluster.node.events import (
    AnnounceWhenRouted,
    AssignmentDeleted,
    AssignmentPut,
    CountersInstalled,
    Detach,
    FenceAll,
    FinalWritten,
    Hold,
    InstallCounters,
    LeaseLapsed,
    NodeAction,
    NodeEvent,
    NodeGone,
    NodeSeen,
    ReadSeqs,
    ReadyReceived,
    Reinject,
    Rejoined,
    Release,
    Rerouted,
    Route,
    RoutesInPlace,
    SaDeleted,
    SaPut,
    SaStart,
    SendOn,
    SendReady,
    SeqsRead,
    StopSending,
    WriteFinal,
)
from cluster.node.handoff import RESEND_S, FinalGate, Ready, push_ready
from cluster.node.outbound import gateway_for
from cluster.node.sa import client_addresses
from cluster.store import Assignment, ChildSaRecord

log = logging.getLogger("cluster.node")

HANDOFF_WAIT_S = 1.0  # how long a new owner waits for the old owner's final record
HOLD_S = 2.0  # outbound packets of a client in hand-off are held this long at most
FORWARD_S = 5.0  # an old owner forwards a handed-off client's traffic this long
#: after routing a handed-off client's addresses to the new owner, the old owner holds what
#: still reaches its TUN (routed before the change) and re-injects it once more this later
LATE_S = 0.05


class IllegalTransition(Exception):
    """A state change the table does not have: a bug in the core, never the peer's doing."""


class ClientState(StrEnum):
    STANDBY = "standby"  # not ours: never was, or handed off
    FENCED = "fenced"  # was ours; a newer epoch elsewhere, no assignment, or lease expired
    AWAITING_SA = "awaiting_sa"  # assigned here, no SA known yet: sending starts with one
    TAKING_OVER = "taking_over"  # unplanned: reading checkpoints (start at checkpoint + J)
    RECEIVING = "receiving"  # planned hand-off to us: held, routed here, READY sent,
    #                          waiting for the old owner's final record
    SENDING = "sending"  # we send under `Client.epoch`
    HANDING_OFF = "handing_off"  # planned hand-off away: fenced, held; the final record waits
    #                              for the new owner's READY, then the routes forward


class Cause(StrEnum):
    """What happened to a client."""

    AWAIT_SA = "assigned_without_sa"  # assigned here, no SA yet
    TAKE_OVER = "take_over"  # assigned here (or a new SA): its checkpoints are read
    RECEIVE = "receive_handoff"  # a planned hand-off to us: its final record is awaited
    STARTED = "started"  # its counters are installed: it is sent for
    FENCE = "fence"  # a newer epoch elsewhere, no assignment, or the lease expired
    HAND_OFF = "hand_off"  # a planned hand-off away from us
    FINAL_DONE = "final_done"  # our final record is written (or given up on)


S, C = ClientState, Cause
OURS = frozenset({S.AWAITING_SA, S.TAKING_OVER, S.RECEIVING, S.SENDING})
#: where an assignment to us with a newer epoch takes a client directly (one we send for,
#: or wait to, is fenced first)
_ASSIGNED_FROM = (S.STANDBY, S.FENCED, S.HANDING_OFF, S.TAKING_OVER, S.RECEIVING)
#: where a take-over's read is pending (and answered: `STARTED`)
_READING = (S.TAKING_OVER, S.RECEIVING, S.SENDING)
TRANSITIONS: dict[tuple[ClientState, Cause], ClientState] = {
    **{(s, C.AWAIT_SA): S.AWAITING_SA for s in _ASSIGNED_FROM},
    **{(s, C.TAKE_OVER): S.TAKING_OVER for s in _ASSIGNED_FROM},
    **{(s, C.RECEIVE): S.RECEIVING for s in _ASSIGNED_FROM},
    # the SA of a client assigned here arrives
    (S.AWAITING_SA, C.TAKE_OVER): S.TAKING_OVER,
    (S.AWAITING_SA, C.RECEIVE): S.RECEIVING,
    # a new Child SA (rekey) of a client we send for: it is taken over alongside
    (S.SENDING, C.TAKE_OVER): S.SENDING,
    (S.SENDING, C.RECEIVE): S.SENDING,
    **{(s, C.STARTED): S.SENDING for s in _READING},
    **{(s, C.FENCE): S.FENCED for s in OURS},
    # only a sender hands a client on with a final record (`_assignment_put`)
    (S.SENDING, C.HAND_OFF): S.HANDING_OFF,
    (S.HANDING_OFF, C.FINAL_DONE): S.STANDBY,
}


def advance(state: ClientState, cause: Cause) -> ClientState:
    """The state after `cause` in `state`; anything not in the table is a bug."""
    try:
        return TRANSITIONS[(state, cause)]
    except KeyError:
        raise IllegalTransition(f"no transition from {state.value} on {cause.value}") from None


@dataclass(slots=True)
class Announce:
    """READY to the old owner, sent again every RESEND_S until `until`."""

    target: tuple[str, int]
    message: bytes
    next_s: float
    until_s: float


@dataclass(slots=True)
class Client:
    ike_sa_id: str
    state: ClientState = ClientState.STANDBY
    epoch: int = -1  # the epoch it is (being) sent for under, while OURS
    assignment: Assignment | None = None
    revision: int = 0  # of `assignment`: guards checkpoints and final records
    spis: set[int] = field(default_factory=set)
    routes: set[bytes] = field(default_factory=set)  # its addresses routed to our TUN
    announce: Announce | None = None


@dataclass(slots=True)
class Stats:
    takeovers_exact: int = 0
    takeovers_jump: int = 0
    fenced: int = 0


class Ownership:
    """The ownership core of node `node_id`. `checkpointer` is its owned SAs' checkpoint
    book (cluster.node.counters): the core owns and disowns SAs there as clients move."""

    def __init__(self, node_id: str, checkpointer: Checkpointer, *,
                 ready_wait_s: float) -> None:
        self.node_id = node_id
        self.checkpointer = checkpointer
        self.stats = Stats()
        self.clients: dict[str, Client] = {}
        self.records: dict[int, ChildSaRecord] = {}  # the SAs the data plane holds
        #: node id -> (back-end address, health port), from nodes/
        self.node_health: dict[str, tuple[str, int]] = {}
        #: back-end address -> back-end IPv6 address of every node that has one
        self.back_end6: dict[str, str | None] = {}
        #: planned hand-offs away: final-record writes waiting for the new owner's READY
        self.finals: FinalGate[WriteFinal] = FinalGate(wait_s=ready_wait_s)
        self.route_refs: Counter[bytes] = Counter()  # address -> clients routing it here
        self.routed: set[bytes] = set()  # addresses routed to the TUN (also those kept)
        #: address -> (new owner's address, until): routed there after a hand-off away
        self.forwarded: dict[bytes, tuple[str, float]] = {}
        #: address -> when to re-inject what is held once more after routing it away
        self.late: dict[bytes, float] = {}
        self._handlers: dict[type[Any], Callable[[Any, float, list[NodeAction]], None]] = {
            AssignmentPut: self._assignment_put, AssignmentDeleted: self._assignment_deleted,
            SaPut: self._sa_put, SaDeleted: self._sa_deleted, NodeSeen: self._node_seen,
            NodeGone: self._node_gone, SeqsRead: self._seqs_read,
            CountersInstalled: self._counters_installed, FinalWritten: self._final_written,
            ReadyReceived: self._ready, RoutesInPlace: self._routes_in_place,
            Rerouted: self._rerouted, LeaseLapsed: self._lease_lapsed,
            Rejoined: self._rejoined,
        }

    # -- the interface ------------------------------------------------------------------------
    def handle(self, event: NodeEvent, now: float) -> list[NodeAction]:
        handler = self._handlers.get(type(event))
        if handler is None:
            raise TypeError(f"not an event of the ownership core: {type(event).__name__}")
        out: list[NodeAction] = []
        handler(event, now, out)
        return out

    def get_timer(self) -> float | None:
        """When `handle_timer` has something to do next (None: nothing waits)."""
        times = [until for _, until in self.forwarded.values()]
        times += self.late.values()
        times += [w.deadline for w in self.finals.waiting.values()]
        times += [min(c.announce.next_s, c.announce.until_s) for c in self.clients.values()
                  if c.announce is not None]
        return min(times, default=None)

    def handle_timer(self, now: float) -> list[NodeAction]:
        out: list[NodeAction] = []
        for addr, (via, until) in list(self.forwarded.items()):
            if now >= until:  # the router has long flipped
                del self.forwarded[addr]
                if addr not in self.route_refs:
                    out.append(Route("unvia", addr, via))
        for addr, at in list(self.late.items()):
            if now >= at:
                del self.late[addr]
                if addr not in self.route_refs:  # not ours again meanwhile
                    out.append(Reinject(frozenset({addr})))
        for c in self.clients.values():
            a = c.announce
            if a is None:
                continue
            if c.state is not S.RECEIVING or now >= a.until_s:
                c.announce = None
            elif now >= a.next_s:  # a datagram may be lost
                a.next_s = now + RESEND_S
                out.append(SendReady(a.message, a.target))
        if self.finals.waiting:
            for write in self.finals.due(now):
                log.warning("no READY from the new owner of %s within %.1f s: final counters "
                            "written without it (its traffic may briefly find no route there)",
                            write.ike_sa_id, self.finals.wait_s)
                out.append(self._refreshed(write))
        return out

    def state(self, ike_sa_id: str) -> ClientState:
        c = self.clients.get(ike_sa_id)
        return ClientState.STANDBY if c is None else c.state

    def count(self, *states: ClientState) -> int:
        return sum(1 for c in self.clients.values() if c.state in states)

    def sent_for(self) -> int:
        """Clients this node sends for (or will, once their SA arrives)."""
        return self.count(S.SENDING, S.AWAITING_SA)

    def revision(self, ike_sa_id: str) -> int | None:
        """The mod_revision of the client's assignment (what its writes are guarded by)."""
        c = self.clients.get(ike_sa_id)
        return c.revision if c is not None and c.assignment is not None else None

    # -- transitions --------------------------------------------------------------------------
    def _client(self, k: str) -> Client:
        c = self.clients.get(k)
        if c is None:
            c = self.clients[k] = Client(k)
        return c

    def _go(self, c: Client, cause: Cause) -> None:
        c.state = advance(c.state, cause)

    def _forget_if_idle(self, c: Client) -> None:
        if (c.state in (S.STANDBY, S.FENCED) and c.assignment is None and not c.spis
                and not c.routes):
            del self.clients[c.ike_sa_id]

    # -- assignments --------------------------------------------------------------------------
    def _assignment_put(self, ev: AssignmentPut, now: float, out: list[NodeAction]) -> None:
        a = ev.assignment
        c = self._client(a.ike_sa_id)
        if c.assignment is not None and a.epoch < c.assignment.epoch:
            return  # an older epoch never wins (fencing token)
        c.assignment, c.revision = a, ev.revision
        parked = self.finals.waiting.get(c.ike_sa_id)
        if parked is not None and parked.epoch != a.epoch:
            # the hand-off away from us was superseded: the parked write runs now, finds the
            # assignment changed (its guard) and drops what was held
            self._run_parked(self.finals.drop(c.ike_sa_id), out)
        if a.node == self.node_id:
            if c.state in OURS and c.epoch == a.epoch:
                return  # the phase flipped (handoff -> active): nothing changes here
            if c.state in (S.SENDING, S.AWAITING_SA):
                self._fence(c, out)
            self._acquire(c, a, None, out)
            return
        if c.state in OURS:
            # only a sender has exact counters to hand on: a client still taken over,
            # received or awaiting its SA here never sent under its epoch, and what this node
            # holds for the SA is older than what its last sender used (a jump above the
            # checkpoint, say). A final record of it would start the next owner below the
            # client's replay window, so it is fenced without one: the sprayer's hand-off
            # timeout completes the move inexactly (checkpoint + J, docs/sprayer.md)
            planned = (a.phase == "handoff" and a.previous_node == self.node_id
                       and c.state is S.SENDING)
            peer = self.node_health.get(a.node) if planned else None
            to = peer[0] if peer is not None else None
            kept = self._fence(c, out, forward_to=to, cause=C.HAND_OFF if planned else C.FENCE)
            if planned:
                self._write_final(c, a, ev.revision, kept, to, now, out)

    def _assignment_deleted(self, ev: AssignmentDeleted, now: float,
                            out: list[NodeAction]) -> None:
        c = self.clients.get(ev.ike_sa_id)
        self._run_parked(self.finals.drop(ev.ike_sa_id), out)
        if c is None:
            return
        c.assignment = None
        if c.state in OURS:
            self._fence(c, out)
        self._forget_if_idle(c)

    def _fence(self, c: Client, out: list[NodeAction], forward_to: str | None = None,
               cause: Cause = C.FENCE) -> set[bytes]:
        """Stop sending for client c now. `forward_to`: a planned hand-off to the node at
        that back-end address. The router keeps sending the client's return traffic here
        until the sprayer flips its route, so the client's addresses stay routed to the TUN,
        where the data plane holds what arrives, until the final record is written
        (`_final_written`); then they are routed to the new owner and what was held is
        given back to the kernel. Returns those addresses."""
        self._go(c, cause)
        spis = frozenset(c.spis)
        for spi in spis:
            self.checkpointer.disown(spi)
        out.append(StopSending(spis))
        if forward_to and c.routes:
            out.append(Hold(frozenset(c.routes), HOLD_S))
        else:
            out.append(Release(self._addresses(spis)))
        self.stats.fenced += 1
        return self._route(c, out, forward_to=forward_to)

    def _acquire(self, c: Client, a: Assignment, spis: set[int] | None,
                 out: list[NodeAction]) -> None:
        """Become the sender for client c under assignment a: read seq/ (waiting up to
        HANDOFF_WAIT_S for the old owner's final record in a planned hand-off)."""
        wanted = set(spis if spis is not None else c.spis)
        c.epoch = a.epoch
        c.announce = None
        if not wanted:
            self._go(c, C.AWAIT_SA)  # sending starts when the SA arrives (`_sa_put`)
            return
        planned = a.phase == "handoff" and bool(a.previous_node)
        self._go(c, C.RECEIVE if planned else C.TAKE_OVER)
        # the client's return traffic may reach us before we send (the old owner forwards
        # it, or the router flips first): route it here and hold it until we do
        out.append(Hold(self._addresses(wanted), HOLD_S))
        self._route(c, out)
        if planned and a.previous_node != self.node_id:
            # READY to the old owner once the hold and these routes are in place
            out.append(AnnounceWhenRouted(c.ike_sa_id))
        out.append(ReadSeqs(c.ike_sa_id, a, frozenset(wanted),
                            HANDOFF_WAIT_S if planned else 0.0))

    def _seqs_read(self, ev: SeqsRead, now: float, out: list[NodeAction]) -> None:
        """Start the clients whose assignment still stands from their seq records (exact
        counters or a jump): the data plane installs them (`CountersInstalled`)."""
        starts: dict[int, SaStart] = {}
        persisted = {}
        clients = []
        for k, a, seqs in ev.items:
            c = self.clients.get(k)
            cur = c.assignment if c is not None else None
            if c is None or cur is None or cur.node != self.node_id or cur.epoch != a.epoch:
                continue  # superseded while we read
            if c.state not in _READING or c.epoch != a.epoch:
                continue
            mine = []
            for spi, seq in seqs.items():
                if spi not in self.records:
                    continue
                to = take_over(seq, a, self.checkpointer.jump)
                if to.exact:
                    self.stats.takeovers_exact += 1
                else:
                    self.stats.takeovers_jump += 1
                starts[spi] = SaStart(to, Traffic.of(seq))
                persisted[spi] = (None if seq is None else
                                  SaCounters(seq.out_seq, seq.in_highest, seq.in_bitmap))
                mine.append(spi)
            clients.append((k, a.epoch, tuple(mine)))
        if clients:
            out.append(InstallCounters(starts, tuple(clients), persisted))

    def _counters_installed(self, ev: CountersInstalled, now: float,
                            out: list[NodeAction]) -> None:
        req = ev.request
        # (the shell answers at once; a client fenced in between gets no send limit)
        clients = [(c, epoch, spis) for k, epoch, spis in req.clients
                   if (c := self.clients.get(k)) is not None and c.state in _READING
                   and c.epoch == epoch]
        owner = {spi: (c.ike_sa_id, epoch) for c, epoch, spis in clients for spi in spis}
        started = {spi: start for spi, start in ev.started.items() if spi in owner}
        for spi, start in started.items():
            k, epoch = owner[spi]
            self.checkpointer.own(spi, k, epoch, start, req.persisted[spi], now)
        out.append(SendOn({spi: self.checkpointer.send_limit(spi) for spi in started}))
        for c, epoch, spis in clients:
            k = c.ike_sa_id
            c.announce = None
            self._go(c, C.STARTED)
            c.epoch = epoch
            self._route(c, out)
            log.info("sending for %s at epoch %d (%s)", k, epoch,
                     ", ".join(f"{s:08x}:{'exact' if req.starts[s].take_over.exact else 'jump'}"
                               for s in spis))

    # -- planned hand-off away (cluster.node.handoff) -----------------------------------------
    def _write_final(self, c: Client, a: Assignment, revision: int, kept: set[bytes],
                     to: str | None, now: float, out: list[NodeAction]) -> None:
        """Once the new owner said READY (it holds and routes the client's traffic) or
        `ready_wait_s` passed: our exact counters as `final` records, guarded by the hand-off
        assignment (DESIGN.md, "Moving a client without rekeying")."""
        write = WriteFinal(c.ike_sa_id, a, revision, frozenset(c.spis), frozenset(kept), to)
        if a.node not in self.node_health:
            out.append(write)  # a new owner we know nothing of (no nodes/ record): no READY
        elif not self.finals.wait(c.ike_sa_id, a.epoch, a.node, write, now):
            out.append(write)  # its READY came first

    def _refreshed(self, write: WriteFinal) -> WriteFinal:
        """A parked write with the client's SAs as they are when it goes out."""
        c = self.clients.get(write.ike_sa_id)
        return replace(write, spis=frozenset(c.spis)) if c is not None else write

    def _run_parked(self, write: WriteFinal | None, out: list[NodeAction]) -> None:
        if write is not None:
            out.append(self._refreshed(write))

    def _ready(self, ev: ReadyReceived, now: float, out: list[NodeAction]) -> None:
        msg = ev.ready
        parked = self.finals.ready(msg, now)
        if parked is not None:
            log.debug("READY from %s for %s at epoch %d", msg.node_id, msg.ike_sa_id,
                      msg.epoch)
        self._run_parked(parked, out)

    def _final_written(self, ev: FinalWritten, now: float, out: list[NodeAction]) -> None:
        """Route the handed-off client's addresses to the new owner (it has routed them to
        its own TUN by now: it started its take-over from the same watch event, and the final
        is what it waits for), or, with no final or no address for the new owner, remove
        them and drop what was held."""
        req = ev.request
        c = self.clients.get(req.ike_sa_id)
        if c is not None and c.state is S.HANDING_OFF:
            self._go(c, C.FINAL_DONE)
        for addr in req.kept:
            if addr in self.route_refs:
                continue  # ours again meanwhile
            self.routed.discard(addr)
            # an IPv6 address goes to the new owner's back-end IPv6 address, if it has one
            via = gateway_for(addr, req.to, self.back_end6.get(req.to)) if req.to else None
            if ev.ok and via:
                self.forwarded[addr] = (via, now + FORWARD_S)
                out.append(Route("via", addr, via))
            else:
                out.append(Route("del", addr))
                out.append(Release(frozenset({addr})))
        if c is not None:
            self._forget_if_idle(c)

    def _rerouted(self, ev: Rerouted, now: float, out: list[NodeAction]) -> None:
        self.late[ev.address] = now + LATE_S

    # -- planned hand-off to us -----------------------------------------------------------------
    def _routes_in_place(self, ev: RoutesInPlace, now: float, out: list[NodeAction]) -> None:
        """Our take-over of the client (a planned hand-off) holds its traffic and routes it
        to our TUN: tell the old owner, which writes its final record on that."""
        c = self.clients.get(ev.ike_sa_id)
        cur = c.assignment if c is not None else None
        if (c is None or cur is None or c.state is not S.RECEIVING or cur.epoch != c.epoch
                or not cur.previous_node):
            return
        target = self.node_health.get(cur.previous_node)
        if target is None:
            log.info("no health address of %s: it writes its final record for %s without "
                     "READY", cur.previous_node, c.ike_sa_id)
            return
        msg = push_ready(Ready(c.ike_sa_id, c.epoch, self.node_id))
        c.announce = Announce(target, msg, now + RESEND_S, now + HANDOFF_WAIT_S)
        out.append(SendReady(msg, target))

    # -- SAs --------------------------------------------------------------------------------------
    def _sa_put(self, ev: SaPut, now: float, out: list[NodeAction]) -> None:
        r = ev.record
        old = self.records.get(r.spi_in)
        self.records[r.spi_in] = r
        # an IKE SA rekey moves its Child SAs to the new IKE SA id: ownership is per IKE SA,
        # so the SA is sent on again only once taken over under the new id's assignment
        moved = old is not None and old.ike_sa_id != r.ike_sa_id
        if old is not None and moved:
            self.checkpointer.disown(r.spi_in)
            prev = self._client(old.ike_sa_id)
            prev.spis.discard(r.spi_in)
            self._route(prev, out)
            self._forget_if_idle(prev)
        c = self._client(r.ike_sa_id)
        c.spis.add(r.spi_in)
        if old is not None and not moved:
            if c.state is S.SENDING or c.state is S.AWAITING_SA:
                self._route(c, out)  # the record may name other client addresses now
        elif c.state in (S.SENDING, S.AWAITING_SA) and c.assignment is not None:
            # a new Child SA (rekey) of a client we send for, or one moved to it
            self._acquire(c, c.assignment, {r.spi_in}, out)
        elif (c.assignment is not None and c.assignment.node == self.node_id
              and c.state not in (S.TAKING_OVER, S.RECEIVING)):
            self._acquire(c, c.assignment, None, out)

    def _sa_deleted(self, ev: SaDeleted, now: float, out: list[NodeAction]) -> None:
        r = self.records.pop(ev.spi, None)
        self.checkpointer.disown(ev.spi)
        if r is None:
            return
        c = self.clients.get(r.ike_sa_id)
        if c is not None:
            c.spis.discard(ev.spi)
            self._route(c, out)
            self._forget_if_idle(c)

    def _addresses(self, spis: Iterable[int]) -> frozenset[bytes]:
        return frozenset(addr for s in spis if (r := self.records.get(s)) is not None
                         for addr in client_addresses(r))

    # -- routes -----------------------------------------------------------------------------------
    def _route(self, c: Client, out: list[NodeAction],
               forward_to: str | None = None) -> set[bytes]:
        """Routes to the TUN for the addresses of client c while it is ours; the address
        routes are reference-counted over clients (two may share a selector). An address no
        longer ours loses its route, except with `forward_to` (a planned hand-off away): then
        it stays routed to the TUN, and is returned, for `_final_written` to route it to the
        new owner once the final record is written."""
        want = set(self._addresses(c.spis)) if c.state in OURS else set()
        had, c.routes = c.routes, want
        for addr in want - had:
            self.route_refs[addr] += 1
            if self.route_refs[addr] == 1:
                self.routed.add(addr)
                self.forwarded.pop(addr, None)
                out.append(Route("tun", addr))
        kept: set[bytes] = set()
        for addr in had - want:
            self.route_refs[addr] -= 1
            if self.route_refs[addr] <= 0:
                del self.route_refs[addr]
                if forward_to:
                    kept.add(addr)
                else:
                    self.routed.discard(addr)
                    out.append(Route("del", addr))
        return kept

    # -- nodes and the lease ----------------------------------------------------------------------
    def _node_seen(self, ev: NodeSeen, now: float, out: list[NodeAction]) -> None:
        self.node_health[ev.node_id] = (ev.address, ev.health_port)
        self.back_end6[ev.address] = ev.address6

    def _node_gone(self, ev: NodeGone, now: float, out: list[NodeAction]) -> None:
        self.node_health.pop(ev.node_id, None)

    def _lease_lapsed(self, ev: LeaseLapsed, now: float, out: list[NodeAction]) -> None:
        if ev.expired:
            # etcd says our lease is gone: our clients may have moved. Fence everything.
            for c in [c for c in self.clients.values() if c.state in OURS]:
                self._fence(c, out)
            out.append(FenceAll())
        else:
            # etcd is silent: an outage (nobody can move our clients) or our partition.
            # Keep forwarding, but only while the sprayer still steers each client to us
            # (docs/node.md, "Fencing"); the send limits bound the rest.
            out.append(Detach(True))

    def _rejoined(self, ev: Rejoined, now: float, out: list[NodeAction]) -> None:
        out.append(Detach(False))
        seen = set()
        for a, revision in ev.assignments:
            seen.add(a.ike_sa_id)
            self._assignment_put(AssignmentPut(a, revision), now, out)
        for k in [k for k, c in self.clients.items()
                  if c.state in (S.SENDING, S.AWAITING_SA) and k not in seen]:
            self._assignment_deleted(AssignmentDeleted(k), now, out)
        log.info("lease confirmed again; %d clients sent for", self.sent_for())
