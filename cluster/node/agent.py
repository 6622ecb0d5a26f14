"""The node agent: the shell that feeds the ownership core and carries out its actions.

Threads: the data path (`Datapath`, owns every SA object), one control thread (this module:
watch events in, `cluster.node.ownership` decides, actions out; never blocks on etcd), the
checkpoint writer and the route writer, and a small pool for etcd reads and writes
(take-overs, final records, on-demand SA reads, re-registration). Anything that talks to etcd
runs off the control thread, so an etcd outage never delays fencing or forwarding.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cluster import systemd
from cluster.esp import IvSource
from cluster.node import events, kernel_io, kernel_sa
from cluster.node import tun as tunmod
from cluster.node.checkpoints import Checkpoints, SeqReader, write_final
from cluster.node.config import NodeConfig, NodeSection
from cluster.node.counters import Checkpointer
from cluster.node.datapath import Datapath
from cluster.node.handoff import HandoffError, is_ready_message, pull_ready
from cluster.node.kernel import KernelPlane
from cluster.node.kernel import fill_snapshot as fill_kernel_snapshot
from cluster.node.membership import NodeMembership, StoreRef
from cluster.node.metrics import Snapshot
from cluster.node.ownership import Ownership
from cluster.node.plane import carry_out, is_plane_action
from cluster.node.relay import IkeRelay
from cluster.node.routes import RouteApplier, remove_routes
from cluster.node.sas import SaInstaller
from cluster.node.userspace import UserspacePlane, fill_snapshot
from cluster.probe import ProbeError, pull_probe, push_reply
from cluster.store import (
    Assignment,
    ChildSaRecord,
    NodeRecord,
    Policy,
    RecordDeleted,
    RecordMalformed,
    RecordPut,
    Store,
    WatchEvent,
    WatchResynced,
)
from cluster.xfrm.kernel import esp_missing

log = logging.getLogger("cluster.node")

IV_RENEW_AT = 1 << 31  # IVs drawn under one prefix before a fresh one is taken
#: clients started per data-path round trip (the data path answers health probes: short
#: round trips keep it answering during a mass take-over)
APPLY_BATCH = 128


@dataclass(slots=True)
class Stats:
    ready_sent: int = 0  # READY datagrams sent as a hand-off's new owner
    ready_malformed: int = 0  # datagrams on the health port that began as READY but were not


class NodeAgent:
    """One cluster node. `start()` brings it up; `stop()` takes it down and leaves the
    cluster (lease revoked)."""

    def __init__(self, config: NodeConfig, store: Store, *,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.config = config
        self.cfg: NodeSection = config.node
        self.ref = StoreRef(store)
        self.clock = clock
        self.wall = wall
        self.stats = Stats()
        c = self.cfg
        self.core = Ownership(c.id, Checkpointer(c.id, c.checkpoint_packets, c.checkpoint_ms,
                                                 c.jump_packets),
                              ready_wait_s=c.ready_wait_ms / 1000)
        self.draining = False
        self.ready = threading.Event()
        self._pool = ThreadPoolExecutor(4, thread_name_prefix="node-etcd")
        self.membership = NodeMembership(
            c, self.ref, self._pool, wall=wall, draining=lambda: self.draining,
            on_lease_lost=lambda reason: self.post(functools.partial(self._lease_lost, reason)),
            on_prefix=lambda prefix: self.plane.renew_iv_prefix(prefix))
        self.datapath: Datapath | None = None
        self.kernel_io: kernel_io.KernelSockets | None = None
        self.plane: UserspacePlane | KernelPlane
        self.dataplane = "userspace"
        self.relay: IkeRelay | None = None
        self._control: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._ready_sock: socket.socket | None = None
        self._thread: threading.Thread | None = None  # the control thread
        self._watchers: list[object] = []
        self._tun_fd = -1
        self._stopping = False
        self._running = False  # every part started
        self._synced: set[str] = set()

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> None:
        c = self.cfg
        self._ready_sock = socket.socket(
            socket.AF_INET6 if ":" in c.address else socket.AF_INET, socket.SOCK_DGRAM)
        self._ready_sock.setblocking(False)
        if c.keyd_address:
            self.relay = IkeRelay(c.keyd_address, c.vip)
            self.relay.start()
        self.dataplane = self._choose_dataplane()
        if self.dataplane == "kernel":
            self._start_kernel_plane()
        else:
            self._start_userspace_plane()
        self.sas = SaInstaller(self.plane, self.core.records)
        self.routes = RouteApplier(
            c.tun, self.plane,
            on_in_place=lambda k: self._feed_later(events.RoutesInPlace(k)),
            on_rerouted=lambda addr: self._feed_later(events.Rerouted(addr)))
        self.checkpoints = Checkpoints(
            self.ref, self.core.checkpointer, self.plane, self.core.revision,
            on_written=lambda done, failed: self.post(
                lambda: self.checkpoints.written(done, failed, self.clock())))
        self.seq_reader = SeqReader(
            self.ref, self._pool, lambda items: self.post(
                functools.partial(self._acquired_many, items)), lambda: self._stopping)
        if self.datapath is not None:
            self.datapath.start()
        if self.kernel_io is not None:
            self.kernel_io.start()
        self._thread = threading.Thread(target=self._control_loop, name="node-control",
                                        daemon=True)
        self._thread.start()
        self.checkpoints.start()
        self.routes.start()
        self._running = True
        # policy/ first: its full read usually lands before the SAs' (the SAs carry a
        # snapshot of their policy for when it does not)
        store = self.ref.store
        self._watchers.append(store.watch(Policy, self._sink(Policy.KIND),
                                          report_malformed=True))
        for cls in (ChildSaRecord, Assignment, NodeRecord):
            self._watchers.append(store.watch(cls, self._sink(cls.KIND)))

    def _choose_dataplane(self) -> str:
        c = self.cfg
        if c.dataplane != "auto":
            return c.dataplane
        why = esp_missing(c.vip)
        if why is None:
            log.info("dataplane auto: the kernel carries ESP (XFRM)")
            return "kernel"
        log.info("dataplane auto: userspace (%s)", why)
        return "userspace"

    def _start_userspace_plane(self) -> None:
        c = self.cfg
        self._tun_fd = tunmod.open_tun(c.tun, c.tun_mtu)
        self.datapath = dp = Datapath(
            vip=c.vip, natt_port=c.natt_port, tun_fd=self._tun_fd,
            health=(c.address, c.health_port), health_reply=self._health_reply,
            ike_port=c.ike_port if self.relay else None,
            on_unknown_spi=self._unknown_spi_seen,
            on_ike=self.relay.submit if self.relay else None,
            fence_grace_s=c.fence_grace_ms / 1000)
        self.membership.register()
        assert self.membership.prefix is not None
        self.iv_source = IvSource(self.membership.prefix)
        self.plane = UserspacePlane(dp, self.iv_source, c.replay_window)

    def _start_kernel_plane(self) -> None:
        """XFRM in this network namespace (cluster.node.kernel): the XFRM interface takes
        the `tun` name, so client routes are written as for the TUN device."""
        c = self.cfg
        kernel_io.create_interface(c.tun, kernel_sa.IF_ID, c.tun_mtu)
        plane = KernelPlane(vip=c.vip, natt_port=c.natt_port, replay_window=c.replay_window,
                            jump_packets=c.jump_packets,
                            checkpoint_packets=c.checkpoint_packets,
                            checkpoint_ms=c.checkpoint_ms,
                            fence_grace_s=c.fence_grace_ms / 1000, clock=self.clock,
                            wall=self.wall)
        plane.start()
        self.plane = plane
        self.kernel_io = kernel_io.KernelSockets(
            vip=c.vip, natt_port=c.natt_port, health=(c.address, c.health_port),
            health_reply=self._health_reply, ike_port=c.ike_port if self.relay else None,
            on_ike=self.relay.submit if self.relay else None, on_aevents=plane.aevents)
        self.membership.register()
        assert self.membership.prefix is not None
        self.iv_source = IvSource(self.membership.prefix)  # unused: the kernel makes IVs

    def _sink(self, kind: str) -> Callable[[WatchEvent], None]:
        def sink(ev: WatchEvent) -> None:
            self.post(lambda: self._on_watch(kind, ev))
        return sink

    def stop(self) -> None:
        self._stopping = True
        self.membership.stopping = True
        for w in self._watchers:
            with contextlib.suppress(Exception):
                w.stop()  # type: ignore[attr-defined]
        self._control.put(None)
        if self._thread is not None:
            self._thread.join(5)
        if self._running:
            self.checkpoints.stop()
            self.routes.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._running:
            self.sas.stop()
        self.membership.stop()
        if self.datapath is not None:
            self.datapath.stop()
        if self.kernel_io is not None:
            self.kernel_io.stop()
        if self.relay is not None:
            self.relay.stop()
        remove_routes(self.cfg.tun, list(self.core.routed),
                      [(addr, via) for addr, (via, _) in list(self.core.forwarded.items())])
        if isinstance(getattr(self, "plane", None), KernelPlane):
            self.plane.close()  # type: ignore[union-attr]
            kernel_io.remove_interface(self.cfg.tun)
        if self._tun_fd >= 0:
            os.close(self._tun_fd)
            self._tun_fd = -1
        if self._ready_sock is not None:
            self._ready_sock.close()
            self._ready_sock = None

    def post(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the control thread."""
        self._control.put(fn)

    def _feed_later(self, event: events.NodeEvent) -> None:
        self.post(functools.partial(self._feed, event))

    # -- control thread ---------------------------------------------------------------------
    def _control_loop(self) -> None:
        tick_s = min(0.05, self.cfg.checkpoint_ms / 4000)
        next_tick = self.clock()
        # systemd's watchdog is fed from this loop: if ownership logic stalls, systemd
        # restarts the node (the data path alone would keep sending unfenced)
        watchdog = systemd.WatchdogTicker()
        while True:
            watchdog.tick(time.monotonic())
            try:
                fn = self._control.get(timeout=max(0.0, next_tick - self.clock()))
            except queue.Empty:
                fn = self._tick
            if fn is None:
                return
            try:
                fn()
            except Exception as e:
                log.error("node control step failed: %s: %s", type(e).__name__, e)
                log.debug("node control step failed", exc_info=True)
            if self.clock() >= next_tick:
                next_tick = self.clock() + tick_s
                if fn is not self._tick:
                    try:
                        self._tick()
                    except Exception as e:
                        log.error("node control tick failed: %s: %s", type(e).__name__, e)
                        log.debug("node control tick failed", exc_info=True)

    def _feed(self, event: events.NodeEvent) -> None:
        self._do(self.core.handle(event, self.clock()))

    def _do(self, actions: list[events.NodeAction]) -> None:
        """Carry out the core's actions, in order."""
        for a in actions:
            if is_plane_action(a):
                started = carry_out(self.plane, a)
                if isinstance(a, events.InstallCounters):
                    self._feed(events.CountersInstalled(a, started or {}))
            elif isinstance(a, events.Route):
                self.routes.route(a)
            elif isinstance(a, events.AnnounceWhenRouted):
                self.routes.announce(a.ike_sa_id)
            elif isinstance(a, events.SendReady):
                # through the data plane: it goes out after the hold queued before it
                self.plane.after_pending(functools.partial(self._send_ready, a.message,
                                                           a.target))
            elif isinstance(a, events.ReadSeqs):
                self.seq_reader.read(a)
            elif isinstance(a, events.WriteFinal):
                write_final(self.ref, self._pool, self.cfg.id, a, self.plane, self.wall(),
                            lambda req, ok: self._feed_later(events.FinalWritten(req, ok)))
            else:
                raise TypeError(f"no shell for {type(a).__name__}")

    def _acquired_many(self, items: list[events.SeqRead]) -> None:
        """Start these clients from their seq records, APPLY_BATCH clients per data-path
        round trip; one checkpoint tick after (a jumped start is written before its first
        packet)."""
        for i in range(0, len(items), APPLY_BATCH):
            self._feed(events.SeqsRead(tuple(items[i:i + APPLY_BATCH])))
        self._tick()

    def _on_watch(self, kind: str, ev: WatchEvent) -> None:
        if isinstance(ev, RecordPut):
            r = ev.record
            if isinstance(r, ChildSaRecord):
                self._sa_put(r)
            elif isinstance(r, Assignment):
                self._feed(events.AssignmentPut(r, ev.revision))
            elif isinstance(r, NodeRecord):
                self._feed(events.NodeSeen(r.id, r.address, r.health_port, r.address6))
                if r.id == self.cfg.id:
                    self.draining = r.state == "draining"
            elif isinstance(r, Policy):
                self.sas.policy_put(ev.name, r)
        elif isinstance(ev, RecordMalformed):
            if kind == "policy":
                self.sas.policy_malformed(ev.name, ev.reason)
        elif isinstance(ev, RecordDeleted):
            if kind == "policy":
                self.sas.policy_deleted(ev.name)
            elif kind == "sa":
                with contextlib.suppress(ValueError):
                    self._sa_deleted(int(ev.name, 16))
            elif kind == "assign":
                self._feed(events.AssignmentDeleted(ev.name))
            elif kind == "nodes":
                self._feed(events.NodeGone(ev.name))
                if ev.name == self.cfg.id and not self._stopping:
                    self.membership.check_removed(ev.key, lambda key: self.post(
                        functools.partial(self._removed_from_cluster, key)))
        elif isinstance(ev, WatchResynced):
            prefix = self.ref.store.keyspace.kind_prefix(kind)
            present = {k[len(prefix):] for k in ev.keys}
            if kind == "sa":
                # the full list at a revision: anything else we hold is gone
                for spi in [s for s in self.core.records if f"{s:08x}" not in present]:
                    self._sa_deleted(spi)
            elif kind == "assign":
                for k in [k for k, c in self.core.clients.items()
                          if c.assignment is not None and k not in present]:
                    self._feed(events.AssignmentDeleted(k))
            elif kind == "policy":
                self.sas.policies_resynced(present)
            self._synced.add(kind)
            if len(self._synced) == 4 and not self.ready.is_set() \
                    and not self.membership.removed:
                self.ready.set()
                # the lease exists (start() registered before watching) and SAs, assignments,
                # nodes and policies are synced: tell systemd (Type=notify) once
                systemd.notify_ready(f"node {self.cfg.id}: lease held, "
                                     f"{len(self.core.records)} SAs loaded, sending for "
                                     f"{self.core.sent_for()} clients")

    def _sa_put(self, r: ChildSaRecord) -> None:
        if self.sas.put(r):
            self._feed(events.SaPut(r))

    def _sa_deleted(self, spi: int) -> None:
        self.sas.deleted(spi)
        self._feed(events.SaDeleted(spi))

    def _unknown_spi_seen(self, spi: int) -> None:
        """A packet named an SPI this node does not hold (data-path thread): worth a read
        only if the gate says so (cluster.node.sas: a flood of made-up SPIs is shed here,
        before it costs the control thread or etcd anything)."""
        if self.sas.gate.admit(spi, self.clock()):
            self.post(lambda: self._unknown_spi(spi))

    def _unknown_spi(self, spi: int) -> None:
        self.sas.fetch(spi, self.ref, lambda r: self.post(
            lambda: self._sa_put(r) if spi not in self.core.records else None))

    def _removed_from_cluster(self, key: str) -> None:
        """Stay out, visibly, until restarted: no health answers (the sprayer sees the node
        down and assigns it nothing), no new registration, `removed` in the metrics. What it
        still owns moves away by the sprayer's fail-over; until then it keeps carrying it."""
        if self.membership.removed or self._stopping:
            return
        self.membership.removed = True
        self.ready.clear()
        log.error("this node's record %s was deleted while its lease lives (clusterctl node "
                  "remove): out of the cluster until cluster-node is restarted (no health "
                  "answers, no new clients, no new registration); %d client(s) still sent "
                  "for move by fail-over", key, self.core.sent_for())
        systemd.notify_status(f"node {self.cfg.id}: removed from the cluster (clusterctl node "
                              "remove); restart to rejoin")

    def _lease_lost(self, reason: str) -> None:
        self._feed(events.LeaseLapsed(expired=reason == "expired"))
        self.membership.reregister(lambda items: self._feed_later(
            events.Rejoined(tuple((v.record, v.mod_revision) for v in items))))

    def _tick(self) -> None:
        if not self._running:
            return
        self._do(self.core.handle_timer(self.clock()))
        if self.iv_source.used > IV_RENEW_AT:
            self.membership.renew_prefix()
        self.checkpoints.tick(self.clock(), self.wall())

    # -- READY and health ---------------------------------------------------------------------
    def _send_ready(self, msg: bytes, target: tuple[str, int]) -> None:
        sock = self._ready_sock
        if sock is None:
            return
        try:
            sock.sendto(msg, target)
            self.stats.ready_sent += 1
        except OSError as e:
            log.debug("READY to %s:%d not sent: %s", *target, e)

    def _health_reply(self, data: bytes) -> bytes | None:
        """A datagram on the health port (data-path thread): the sprayer's probe, answered
        while the node is ready, or a new owner's READY (cluster.node.handoff)."""
        if is_ready_message(data):
            try:
                msg = pull_ready(data)
            except HandoffError:
                self.stats.ready_malformed += 1
                return None
            self._feed_later(events.ReadyReceived(msg))
            return None
        try:
            nonce = pull_probe(data)
        except ProbeError:
            return None
        if not self.ready.is_set():
            return None
        return push_reply(nonce, self.draining, self.cfg.id)

    def snapshot(self) -> Snapshot:
        s = Snapshot()
        if not self._running:
            return s
        cp = self.core.checkpointer
        if isinstance(self.plane, KernelPlane):
            fill_kernel_snapshot(self.plane, s, cp.owned(), cp.lag)
        else:
            fill_snapshot(self.plane, s, cp.owned(), cp.lag)
        s.checkpoint_lag_seconds = cp.oldest_unacked_s(self.clock())
        s.checkpoints_written = self.checkpoints.stats.written
        s.checkpoint_failures = self.checkpoints.stats.failures
        s.checkpoints_queued = cp.queued()
        s.sa_fetches = self.sas.fetches
        s.sa_fetches_shed = self.sas.shed
        s.ike_relayed = self.relay.relayed if self.relay else 0
        st = self.core.stats
        s.takeovers_exact, s.takeovers_jump, s.fenced = (
            st.takeovers_exact, st.takeovers_jump, st.fenced)
        s.lease_ok = int(self.membership.lease_ok.is_set())
        s.draining = int(self.draining)
        s.removed = int(self.membership.removed)
        s.finals_without_ready = self.core.finals.timeouts
        s.policies_failing_closed = len(self.sas.policies.failing_closed())
        return s
