"""The kernel data plane: the node's ESP carried by Linux XFRM, as a `DataPlane`
(cluster.node.plane). The ownership core, the checkpoint records and the hand-off are the
userspace plane's; only what executes them differs.

- Every Child SA the node holds is an inbound XFRM state (any node decrypts what reaches
  it); an SA the node sends on also has an outbound state and policy, installed only while
  it may send (cluster.node.kernel_sa). Client virtual IPs owned here are routed into the
  node's XFRM interface (its name is the `tun` option, cluster.node.routes writes the
  routes as for the TUN device).
- `install_counters` sets the inbound window with XFRM_MSG_NEWAE (NLM_F_REPLACE) and keeps
  the take-over out_seq, which the outbound state is installed with (XFRMA_REPLAY_ESN_VAL
  `oseq`) when sending starts. `counters` reads XFRM_MSG_GETAE; `moved_counters` reads the
  replay state the aevents keep fresh (XFRMA_REPLAY_THRESH: every D packets) and asks GETAE
  for SAs whose last reading is older than T or that must be written.
- Stopping (hand-off, fencing) deletes the outbound policy, then the state; the final
  out_seq is the one the kernel's XFRM_MSG_DELSA notification carries (no packet can use a
  deleted state, so it is exact), else GETAE's just before the delete.

The send limit. The kernel cannot refuse a sequence number per packet. The outbound state
reports its counter by aevent every `aevent_threshold` packets, and the plane removes the
outbound state once the counter comes within `stop_margin` = J/2 of the limit (acknowledged
checkpoint + J); a raised limit installs it again at the exact counter. The kernel may send
past the stop point until the state is gone: by up to one threshold plus what it sends while
the event travels and the state is deleted — covered by J/2 (with the default D = 1024,
524288 packets). So the guarantee of cluster.node.counters holds while the node can act
within J/2 packets of an SA's traffic; a kernel plane's SA also stops J/2 earlier than a
userspace one when etcd does not acknowledge checkpoints.

Nonces under split brain (the GCM and ChaCha20-Poly1305 IV). The kernel makes an ESP
packet's explicit IV with seqiv: the 64-bit sequence number XOR a salt drawn at random when
the state's transform is set up (crypto/seqiv.c). Two nodes that send on one SA at once — an
old owner not yet fenced and a new one that started at checkpoint + J — use disjoint
sequence numbers, and their IVs collide only if s1 XOR salt1 = s2 XOR salt2 for some pair,
i.e. s1 XOR s2 = salt1 XOR salt2, a uniformly random 64-bit value: with n1 and n2 packets
sent, the chance is at most n1 * n2 / 2^64 (2^-24 for 2^20 packets each). A node that sent
on the SA before and sends again after a restart draws a new salt, so even a reused sequence
number (which the counters rule out) would not repeat the IV but with that chance. This is
weaker than the userspace plane's node-unique IV prefix (cluster.esp.nonce), which makes a
collision impossible: the exposure is the random-collision bound above, per SA, during
split brain only.

Given up against the userspace plane (docs/node.md, "Choosing a data plane"): per-identity
traffic policies are not enforced (an SA with a policy is installed and counted in
`policies_unenforced`); outbound packets of a client in hand-off are not held but dropped
by the kernel (no queue to reinject from); NAT rebinding is not followed (the outbound state
sends to the record's address); an unknown SPI is dropped by the kernel without the on-demand
read of its record; while detached, the fence grace is judged by the inbound state's last use
(second resolution).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import select
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cluster.esp import SaCounters
from cluster.node import kernel_sa as ksa
from cluster.node.counters import Traffic, merge_window
from cluster.node.events import SaStart
from cluster.node.metrics import Snapshot
from cluster.node.mobility import peer_after_update
from cluster.node.plane import Addresses, SaRefused
from cluster.policy import PacketFilter
from cluster.store import ChildSaRecord
from cluster.xfrm import AeEvent, KernelError, Lifetime, Replay, XfrmState
from cluster.xfrm.kernel import SaEvents, XfrmSocket

log = logging.getLogger("cluster.node.kernel")

#: how long a stop waits for the kernel's DELSA notification before it takes GETAE's count
DELSA_WAIT_S = 0.5


@dataclass(slots=True)
class _Sa:
    record: ChildSaRecord
    peer: tuple[str, int]
    inbound: XfrmState
    out_seq: int = 0  # last outbound sequence number known used (or the take-over start)
    in_highest: int = 0
    in_bitmap: int = 0
    read_at_s: float = float("-inf")  # when the counters above were last read
    limit: int = 0  # send limit (0: this node does not send on the SA)
    sending: bool = False  # the outbound state (and, if it wins, its policies) is installed
    paused: bool = False  # sending stopped short of the limit (margin, or detached)
    traffic_base: Traffic = field(default_factory=Traffic)
    out_done: Traffic = field(default_factory=Traffic)  # of outbound states removed
    in_life: Lifetime = field(default_factory=Lifetime)
    out_life: Lifetime = field(default_factory=Lifetime)

    def counters(self) -> SaCounters:
        return SaCounters(self.out_seq, self.in_highest, self.in_bitmap)

    def traffic(self) -> Traffic:
        """ESP packets and bytes the kernel counted on the states (bytes as the kernel counts
        them), over the SA's life as far as this node knows."""
        return self.traffic_base + self.local_traffic()

    def local_traffic(self) -> Traffic:
        return self.out_done + Traffic(self.in_life.packets, self.out_life.packets,
                                       self.in_life.bytes, self.out_life.bytes)


@dataclass(slots=True)
class KernelStats:
    finals_exact: int = 0  # stops whose out_seq came from the DELSA notification
    finals_read: int = 0  # stops that took GETAE's count (the notification did not arrive)
    limit_stops: int = 0  # outbound states removed at the stop margin
    kernel_errors: int = 0  # requests the kernel refused (logged)
    policies_unenforced: int = 0  # SAs installed with a traffic policy the plane ignores


class KernelPlane:
    """`DataPlane` over XFRM in the node's network namespace. Calls come from the control
    thread, aevents from the kernel sockets' thread: one lock serialises them (each call is a
    few netlink round trips to the local kernel, never the network)."""

    def __init__(self, *, vip: str, natt_port: int, replay_window: int, jump_packets: int,
                 checkpoint_packets: int, checkpoint_ms: int, fence_grace_s: float,
                 if_id: int = ksa.IF_ID, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.vip = vip
        self.natt_port = natt_port
        self.window = replay_window
        self.margin = ksa.stop_margin(jump_packets)
        self.thresh = ksa.aevent_threshold(checkpoint_packets, self.margin)
        self.in_thresh = max(1, checkpoint_packets)
        self.refresh_s = checkpoint_ms / 1000
        self.fence_grace_s = fence_grace_s
        self.if_id = if_id
        self.clock = clock
        self.wall = wall
        self.stats = KernelStats()
        self.detached = False
        self.xfrm = XfrmSocket()
        self.sa_events = SaEvents()
        self.sas: dict[int, _Sa] = {}
        self._by_out: dict[tuple[str, int], int] = {}  # (peer address, spi_out) -> spi_in
        self._policy_of: dict[str, int] = {}  # client network -> spi_in whose policy holds it
        self._lock = threading.RLock()

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Remove what a previous run left and install the interface's in/fwd policies.

        A node that was killed (SIGKILL, a crash) leaves its XFRM states and its outbound
        policies in the namespace; they are its own by their `if_id`, the node's interface
        id (`kernel_sa.IF_ID`), which nothing else here uses: every state with it (inbound
        and outbound) and every outbound policy with it go. Other states and policies (another
        IPsec daemon's, if_id 0 or another) are left alone; the in/fwd policies with it are
        the interface's own and are installed again."""
        with self._lock:
            for info in self.xfrm.dump_states():
                if info.state.if_id == self.if_id:
                    self.xfrm.delete_state(info.state.dst, info.state.spi, info.state.src)
            stale = [p for p in self.xfrm.dump_policies()
                     if p.if_id == self.if_id and p.direction == "out"]
            for p in stale:
                self.xfrm.delete_policy(p.src, p.dst, p.direction, self.if_id)
            if stale:
                log.info("removed %d outbound policies a previous run left", len(stale))
            for p in ksa.interface_policies(self.if_id):
                self.xfrm.add_policy(p, update=True)

    def close(self) -> None:
        with self._lock:
            for spi in list(self.sas):
                with contextlib.suppress(KernelError, OSError):
                    self._remove(spi)
            for p in ksa.interface_policies(self.if_id):
                with contextlib.suppress(KernelError, OSError):
                    self.xfrm.delete_policy(p.src, p.dst, p.direction, self.if_id)
            self.xfrm.close()
            self.sa_events.close()

    # -- SAs --------------------------------------------------------------------------------
    def install_sa(self, record: ChildSaRecord, policy: PacketFilter | None, *,
                   moved: bool) -> None:
        with self._lock:
            prev = self.sas.get(record.spi_in)
            peer = (record.peer_addr, record.peer_port)
            if prev is not None:
                peer = peer_after_update(prev.peer, prev.record, record)
            try:
                inbound = ksa.inbound_state(record, vip=self.vip, natt_port=self.natt_port,
                                            window=self.window, replay_thresh=self.in_thresh,
                                            if_id=self.if_id)
            except (ValueError, KeyError) as e:
                raise SaRefused(str(e)) from None
            if policy is not None and (prev is None or prev.record.policy != record.policy):
                self.stats.policies_unenforced += 1
                log.warning("SA %08x: traffic policy %r is not enforced by the kernel data "
                            "plane", record.spi_in, record.policy)
            if prev is None:
                sa = _Sa(record, peer, inbound)
                self._add_inbound(sa, SaCounters(0, 0, 0))
                self.sas[record.spi_in] = sa
                return
            was_sending = prev.sending
            if prev.sending and (moved or peer != prev.peer):
                self._stop_outbound(prev)
            if _without_replay(inbound) != _without_replay(prev.inbound):
                self._refresh(prev)  # its counters carry over into the new state
                with contextlib.suppress(KernelError):
                    self._delete_inbound(prev)
                prev.inbound = inbound
                self._add_inbound(prev, prev.counters())
            prev.record, prev.peer = record, peer
            if moved:
                prev.limit = 0
                prev.paused = False
            elif was_sending and not prev.sending:
                self._start_outbound(prev)

    def remove_sa(self, spi: int) -> None:
        with self._lock:
            if spi in self.sas:
                self._remove(spi)

    def set_policy(self, name: str, filters: dict[int, PacketFilter | None]) -> None:
        """Traffic policies are not enforced by this plane (see the module docstring)."""

    # -- sending ----------------------------------------------------------------------------
    def install_counters(self, starts: dict[int, SaStart]) -> dict[int, SaCounters]:
        with self._lock:
            started = {}
            for spi, st in starts.items():
                sa = self.sas.get(spi)
                if sa is None:
                    continue
                self._refresh(sa)
                start = merge_window(sa.counters(), st.take_over.counters, self.window)
                self.xfrm.set_ae(self.vip, spi, sa.record.peer_addr,
                                 Replay(self.window, start.in_highest, 0,
                                        ksa.replay_of(start, self.window).bitmap))
                sa.out_seq, sa.in_highest, sa.in_bitmap = (start.out_seq, start.in_highest,
                                                           start.in_bitmap)
                sa.traffic_base = st.carried - sa.local_traffic()
                started[spi] = start
            return started

    def send_on(self, limits: dict[int, int]) -> None:
        with self._lock:
            for spi, limit in limits.items():
                sa = self.sas.get(spi)
                if sa is not None:
                    sa.limit = limit
                    self._resume(sa)

    def raise_send_limits(self, limits: dict[int, int]) -> None:
        with self._lock:
            for spi, limit in limits.items():
                sa = self.sas.get(spi)
                if sa is not None and sa.limit:
                    sa.limit = limit
                    if not sa.sending:
                        self._resume(sa)

    def stop_sending(self, spis: frozenset[int]) -> None:
        with self._lock:
            for spi in spis:
                sa = self.sas.get(spi)
                if sa is not None:
                    sa.limit = 0
                    sa.paused = False
                    self._stop_outbound(sa)

    def fence_all(self) -> None:
        self.stop_sending(frozenset(self.sas))

    def set_detached(self, detached: bool) -> None:
        with self._lock:
            self.detached = detached
            if detached:
                self._check_detached()
            else:
                for sa in self.sas.values():
                    if sa.limit and not sa.sending:
                        self._resume(sa)

    # -- held traffic: the kernel has no queue to give back (module docstring) ---------------
    def hold(self, addresses: Addresses, for_s: float) -> None:
        pass

    def release(self, addresses: Addresses) -> None:
        pass

    def reinject(self, addresses: Addresses, hold_s: float = 0.0) -> None:
        pass

    # -- counters ---------------------------------------------------------------------------
    def counters(self, spis: Iterable[int]) -> dict[int, tuple[SaCounters, Traffic]]:
        with self._lock:
            out = {}
            for spi in spis:
                sa = self.sas.get(spi)
                if sa is not None:
                    self._refresh(sa)
                    out[spi] = (sa.counters(), sa.traffic())
            return out

    def moved_counters(self, marks: dict[int, tuple[int, int, int]],
                       forced: set[int]) -> dict[int, tuple[SaCounters, Traffic]]:
        with self._lock:
            now = self.clock()
            if self.detached:
                self._check_detached()
            out = {}
            for spi, mark in list(marks.items()):
                sa = self.sas.get(spi)
                if sa is None:
                    continue
                if spi in forced or now - sa.read_at_s >= self.refresh_s:
                    self._refresh(sa)
                if spi in forced or mark != (sa.out_seq, sa.in_highest, sa.in_bitmap):
                    out[spi] = (sa.counters(), sa.traffic())
            return out

    def after_pending(self, fn: Callable[[], None]) -> None:
        fn()  # every call is in effect when it returns

    def renew_iv_prefix(self, prefix: bytes) -> None:
        """The kernel draws its own IV salt per state (module docstring): nothing to do."""

    # -- aevents (the kernel sockets' thread) -------------------------------------------------
    def aevents(self, events: list[AeEvent]) -> None:
        with self._lock:
            for ev in events:
                if ev.replay is None:
                    continue
                if ev.dst == self.vip:
                    sa = self.sas.get(ev.spi)
                    if sa is not None:
                        sa.in_highest, sa.in_bitmap = ksa.inbound_counters(ev.replay)
                        if ev.lifetime is not None:
                            sa.in_life = ev.lifetime
                    continue
                spi_in = self._by_out.get((ev.dst, ev.spi))
                sa = self.sas.get(spi_in) if spi_in is not None else None
                if sa is None or not sa.sending:
                    continue
                sa.out_seq = max(sa.out_seq, ev.replay.out_seq)
                if ev.lifetime is not None:
                    sa.out_life = ev.lifetime
                if not ksa.may_send(sa.out_seq, sa.limit, self.margin):
                    self.stats.limit_stops += 1
                    log.warning("SA %08x: outbound counter %d within %d of its send limit "
                                "%d: stopped until a checkpoint is acknowledged",
                                sa.record.spi_in, sa.out_seq, self.margin, sa.limit)
                    self._stop_outbound(sa)
                    sa.paused = True

    # -- inside the lock ----------------------------------------------------------------------
    def _add_inbound(self, sa: _Sa, c: SaCounters) -> None:
        st = dataclasses.replace(sa.inbound, replay=ksa.replay_of(c, self.window))
        try:
            self.xfrm.add_state(st)
        except KernelError as e:
            if not e.exists:
                raise SaRefused(str(e)) from None
            self.xfrm.delete_state(st.dst, st.spi, st.src)  # left by an earlier run
            self.xfrm.add_state(st)

    def _delete_inbound(self, sa: _Sa) -> None:
        self.xfrm.delete_state(self.vip, sa.record.spi_in, sa.inbound.src)

    def _refresh(self, sa: _Sa) -> None:
        """The SA's counters and traffic from the kernel (GETAE, both states)."""
        try:
            ae = self.xfrm.get_ae(self.vip, sa.record.spi_in, sa.inbound.src)
        except KernelError as e:
            self._kernel_error(e)
            return
        if ae.replay is not None:
            sa.in_highest, sa.in_bitmap = ksa.inbound_counters(ae.replay)
        if ae.lifetime is not None:
            sa.in_life = ae.lifetime
        if sa.sending:
            try:
                out = self.xfrm.get_ae(sa.peer[0], sa.record.spi_out, self.vip)
            except KernelError as e:
                self._kernel_error(e)
            else:
                if out.replay is not None:
                    sa.out_seq = max(sa.out_seq, out.replay.out_seq)
                if out.lifetime is not None:
                    sa.out_life = out.lifetime
        sa.read_at_s = self.clock()

    def _resume(self, sa: _Sa) -> None:
        if sa.sending or not sa.limit:
            return
        if not ksa.may_send(sa.out_seq, sa.limit, self.margin):
            sa.paused = True  # waits for a raised limit (the take-over start is written)
            return
        if self.detached and not self._heard_recently(sa):
            sa.paused = True
            return
        sa.paused = False
        self._start_outbound(sa)

    def _start_outbound(self, sa: _Sa) -> None:
        r = sa.record
        st = ksa.outbound_state(r, sa.peer, vip=self.vip, natt_port=self.natt_port,
                                window=self.window, out_seq=sa.out_seq,
                                replay_thresh=self.thresh, if_id=self.if_id)
        try:
            self.xfrm.add_state(st)
        except KernelError as e:
            if not e.exists:
                self._kernel_error(e)
                return
            self.xfrm.delete_state(st.dst, st.spi, st.src)
            self.xfrm.add_state(st)
        sa.sending = True
        sa.out_life = Lifetime()
        self._by_out[(sa.peer[0], r.spi_out)] = r.spi_in
        for p in ksa.outbound_policies(r, sa.peer, vip=self.vip, if_id=self.if_id):
            holder = self.sas.get(self._policy_of.get(p.dst, 0))
            if holder is not None and holder is not sa and holder.sending \
                    and holder.record.created_at > r.created_at:
                continue  # a newer Child SA of the client sends (rekey)
            self.xfrm.add_policy(p, update=True)
            self._policy_of[p.dst] = r.spi_in

    def _stop_outbound(self, sa: _Sa) -> None:
        """Delete the outbound policies and state; `out_seq` ends exact (module docstring)."""
        if not sa.sending:
            return
        r = sa.record
        for p in ksa.outbound_policies(r, sa.peer, vip=self.vip, if_id=self.if_id):
            if self._policy_of.get(p.dst) == r.spi_in:
                del self._policy_of[p.dst]
                with contextlib.suppress(KernelError):
                    self.xfrm.delete_policy(p.src, p.dst, "out", self.if_id)
        self.sa_events.deleted()  # what queued before is not this delete's
        with contextlib.suppress(KernelError):
            out = self.xfrm.get_ae(sa.peer[0], r.spi_out, self.vip)
            if out.replay is not None:
                sa.out_seq = max(sa.out_seq, out.replay.out_seq)
            if out.lifetime is not None:
                sa.out_life = out.lifetime
        with contextlib.suppress(KernelError):
            self.xfrm.delete_state(sa.peer[0], r.spi_out, self.vip)
        final = self._await_deleted(sa.peer[0], r.spi_out)
        if final is not None:
            replay, life = final
            sa.out_seq = max(sa.out_seq, replay.out_seq)
            sa.out_life = life
            self.stats.finals_exact += 1
        else:
            self.stats.finals_read += 1
        sa.out_done = sa.out_done + Traffic(0, sa.out_life.packets, 0, sa.out_life.bytes)
        sa.out_life = Lifetime()
        sa.sending = False
        self._by_out.pop((sa.peer[0], r.spi_out), None)
        # another Child SA of the client that sends takes its addresses back
        for net in ksa.client_networks(r):
            if net in self._policy_of:
                continue
            best = max((o for o in self.sas.values() if o.sending and o is not sa
                        and net in ksa.client_networks(o.record)),
                       key=lambda o: o.record.created_at, default=None)
            if best is not None:
                for p in ksa.outbound_policies(best.record, best.peer, vip=self.vip,
                                               if_id=self.if_id):
                    if p.dst == net:
                        self.xfrm.add_policy(p, update=True)
                        self._policy_of[net] = best.record.spi_in

    def _await_deleted(self, dst: str, spi: int) -> tuple[Replay, Lifetime] | None:
        deadline = time.monotonic() + DELSA_WAIT_S
        while True:
            for d in self.sa_events.deleted():
                if d.dst == dst and d.spi == spi and d.replay is not None:
                    return d.replay, d.lifetime
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            select.select([self.sa_events], [], [], left)

    def _remove(self, spi: int) -> None:
        sa = self.sas[spi]
        self._stop_outbound(sa)
        with contextlib.suppress(KernelError):
            self._delete_inbound(sa)
        del self.sas[spi]

    def _heard_recently(self, sa: _Sa) -> bool:
        try:
            info = self.xfrm.get_state(self.vip, sa.record.spi_in, sa.inbound.src)
        except KernelError:
            return False
        used = info.lifetime.use_time
        return bool(used) and self.wall() - used <= max(1.0, self.fence_grace_s)

    def _check_detached(self) -> None:
        for sa in self.sas.values():
            if sa.sending and not self._heard_recently(sa):
                self._stop_outbound(sa)
                sa.paused = True

    def _kernel_error(self, e: KernelError) -> None:
        self.stats.kernel_errors += 1
        log.error("%s", e)


def _without_replay(st: XfrmState) -> XfrmState:
    return dataclasses.replace(st, replay=None)


def fill_snapshot(plane: KernelPlane, s: Snapshot, owned: set[int],
                  lag: Callable[[int, SaCounters], int]) -> None:
    """The kernel plane's part of the node's metrics, from what the plane last read."""
    with plane._lock:
        sas = list(plane.sas.values())
    t = Traffic()
    for sa in sas:
        t = t + sa.local_traffic()
    s.packets_in, s.bytes_in, s.packets_out, s.bytes_out = (
        t.packets_in, t.bytes_in, t.packets_out, t.bytes_out)
    s.sas_installed = len(sas)
    s.sas_owned = len(owned)
    s.checkpoint_lag_packets = max([0, *(lag(sa.record.spi_in, sa.counters()) for sa in sas
                                         if sa.record.spi_in in owned)])
    st = plane.stats
    s.drops = {"kernel_limit_stop": st.limit_stops} if st.limit_stops else {}
