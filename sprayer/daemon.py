"""The sprayer's control loop: watches + probes in, assignments and driver updates out.

One thread runs the loop; the store's watchers run their own threads and hand events over a
queue. Every tick (the probe interval): fold watch events into the view, probe the nodes,
keep or seek leadership, and — as leader, once the initial reads are in — run the planner,
write its actions to assign/ (compare-and-swap on each assignment and on the leader key, in
batched transactions) and bring the driver in line with the view. IKE goes to the keyd
instances registered in keyd/ (the configured list only while none is); the leader also
probes them (sprayer/keyd.py) and takes out at once an instance whose port is refused.
A standby does everything but write and apply, so its view is warm when it takes over.

etcd trouble never stops the loop: writes wait for the next tick, the kernel keeps forwarding
with the last map, and the watches resume where they stopped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from prometheus_client import CollectorRegistry, Counter, Gauge

from cluster.host import DriverError
from cluster.plan import (
    Assign,
    CompleteHandoff,
    Failover,
    PlanAction,
    Planner,
    StartHandoff,
)
from cluster.probe import ProbeError, pull_reply, push_probe
from cluster.store.client import Guard, Store
from cluster.store.errors import StoreError
from cluster.store.records import (
    Assignment,
    ChildSaRecord,
    KeydRecord,
    NodeRecord,
    Record,
    SeqRecord,
)
from cluster.store.watch import PrefixWatcher, RecordPut, WatchEvent
from cluster.systemd import WatchdogTicker, notify_ready
from sprayer.apply import Applier
from sprayer.health import HealthTracker
from sprayer.keyd import RefusalProbe, Refusals, keyd_for
from sprayer.leader import Leadership
from sprayer.mapcheck import MapChecker
from sprayer.nft import MapDiff
from sprayer.settings import SprayerSettings
from sprayer.view import ClusterView, Targets

log = logging.getLogger("sprayer")

#: etcd's default --max-txn-ops (128) bounds compares too: 60 puts + 61 compares per batch
WRITE_BATCH = 60


class SprayerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.moves = Counter("sprayer_moves", "Assignment changes written", ["kind"], registry=r)
        self.write_conflicts = Counter("sprayer_write_conflicts",
                                       "Assignment writes refused by compare-and-swap",
                                       registry=r)
        self.probe_drops = Counter("sprayer_probe_drops",
                                   "Datagrams on the probe socket that were not valid replies",
                                   registry=r)
        self.probe_rounds_late = Counter(
            "sprayer_probe_rounds_late",
            "Probe rounds that ran more than an interval late (the sprayer's loop stalled): "
            "they judge no node", registry=r)
        self.driver_errors = Counter("sprayer_driver_errors", "Driver updates that failed",
                                     registry=r)
        self.etcd_errors = Counter("sprayer_etcd_errors", "etcd calls that failed", registry=r)
        self.leader = Gauge("sprayer_leader", "1 while this sprayer is the leader", registry=r)
        self.nodes_alive = Gauge("sprayer_nodes_alive", "Nodes that answer probes", registry=r)
        self.spis = Gauge("sprayer_spis", "SPIs in the steering map", registry=r)
        self.map_repairs = Counter(
            "sprayer_spi_map_repairs", "Times the kernel's SPI map differed from the plan "
            "and was rewritten", registry=r)
        self.map_differences = Counter(
            "sprayer_spi_map_differences", "Entries by which the kernel's SPI map differed "
            "from the plan", ["kind"], registry=r)
        self.keyd_live = Gauge("sprayer_keyd_live", "keyd instances IKE is steered to",
                               registry=r)
        self.keyd_refused = Counter("sprayer_keyd_refused",
                                    "keyd instances taken out because their port was refused",
                                    registry=r)


class Trouble:
    """Logs a recurring failure once when it starts (or changes) and once when it ends,
    instead of on every tick."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.current: str | None = None

    def failed(self, detail: str) -> None:
        if detail != self.current:
            log.warning("%s: %s", self.what, detail)
            self.current = detail

    def ok(self) -> None:
        if self.current is not None:
            log.info("%s: recovered", self.what)
            self.current = None


class Prober:
    """Sends `IPSC-PROBE` + nonce to each node, matches replies by nonce.

    A probe is missed only if its answer was not received within the probe interval while
    the sprayer was reading: each round first reads every reply already queued on the socket,
    then judges the previous round's probes — unless this round runs more than an interval
    past its time. Then the sprayer's own loop stalled (folding thousands of watch events,
    writing a mass move, a starved CPU): the nodes' answers may be as late as the sprayer, so
    nothing is judged and the round only probes again (`late_rounds`). A node that is really
    gone still misses every round that runs on time.
    """

    def __init__(self, interval_s: float, metrics: SprayerMetrics | None = None) -> None:
        self.interval_s = interval_s
        self.metrics = metrics
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("0.0.0.0", 0))
        self.sock.setblocking(False)
        self._outstanding: dict[bytes, str] = {}
        #: the last judged (or skipped) round's nonces: a reply to one comes too late to
        #: count, but it is no junk either
        self._expired: set[bytes] = set()
        self._sent_at: float | None = None   # monotonic time of the last round
        self.late_rounds = 0
        self.dropped = 0

    def round(self, nodes: dict[str, tuple[str, int]], health: HealthTracker,
              now: float, now_m: float) -> bool:
        """Read the replies already queued, judge the last round's probes (each unanswered
        one is a miss for its node), then probe every node again. `now` is the health
        tracker's clock, `now_m` the monotonic clock the rounds are timed by. Returns False
        for a late round, which judges nothing."""
        self.read(health, lambda: now)
        on_time = self._sent_at is None or now_m - self._sent_at <= 2 * self.interval_s
        if on_time:
            for node_id in set(self._outstanding.values()):
                health.missed(node_id, now)
        else:
            self.late_rounds += 1
            if self.metrics is not None:
                self.metrics.probe_rounds_late.inc()
        self._expired = set(self._outstanding)
        self._outstanding.clear()
        for node_id, (addr, port) in nodes.items():
            nonce = os.urandom(8)
            self._outstanding[nonce] = node_id
            with contextlib.suppress(OSError):  # unreachable now: a miss next round
                self.sock.sendto(push_probe(nonce), (addr, port))
        self._sent_at = now_m
        return on_time

    def read(self, health: HealthTracker, clock: Callable[[], float]) -> None:
        """Handle every reply queued on the socket now, without waiting."""
        while True:
            try:
                data, _ = self.sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            try:
                reply = pull_reply(data)
            except ProbeError:
                self._drop()
                continue
            node_id = self._outstanding.get(reply.nonce)
            if node_id is None or node_id != reply.node_id:
                if reply.nonce not in self._expired:
                    self._drop()
                continue
            del self._outstanding[reply.nonce]
            health.answered(node_id, clock(), draining=reply.draining)

    def _drop(self) -> None:
        self.dropped += 1
        if self.metrics is not None:
            self.metrics.probe_drops.inc()

    def receive(self, timeout_s: float, health: HealthTracker, clock: Callable[[], float],
                wake: socket.socket | None = None) -> None:
        """Handle probe replies until the timeout, or until `wake` becomes readable (a watch
        event arrived: the loop must act on it now, not at the next probe round). Replies
        that are ready are read either way."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        watched = [self.sock] if wake is None else [self.sock, wake]
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select(watched, [], [], max(0.0, left))
            if not ready:
                return
            if self.sock in ready:
                self.read(health, clock)
            if wake is not None and wake in ready:
                with contextlib.suppress(BlockingIOError):
                    wake.recv(4096)
                return

    def close(self) -> None:
        self.sock.close()


class Sprayer:
    def __init__(self, settings: SprayerSettings, store: Store, applier: Applier | None,
                 *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.store = store
        self.applier = applier
        self.clock = clock
        self.metrics = SprayerMetrics()
        self.health = HealthTracker(misses=settings.probe_misses,
                                    hold_down_s=settings.hold_down_ms / 1000.0,
                                    max_hold_down_s=settings.max_hold_down_ms / 1000.0)
        self.view = ClusterView(on_node_gone=lambda n: self.health.lease_lost(n, self.clock()))
        self.planner = Planner(settings.rebalance_moves_per_s, settings.handoff_timeout_s)
        self.leadership = Leadership(store, settings.id, settings.lease_ttl_s)
        self.prober = Prober(settings.probe_interval_s, self.metrics)
        self.refusals = Refusals()
        # the keyd probe follows the mark routes the applier keeps: no applier, no probe
        self.keyd_probe = RefusalProbe(settings.vip, netns=settings.netns) \
            if applier is not None and settings.driver != "haproxy" else None
        self._keyd_steered: tuple[str, ...] | None = None
        self._events: queue.Queue[tuple[str, WatchEvent]] = queue.Queue()
        self._watchers: list[PrefixWatcher] = []
        self._applied: tuple[int, tuple[str, ...], tuple[str, ...]] | None = None
        self._planned: tuple[int, tuple[tuple[str, bool, str], ...]] | None = None
        self._was_leader = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._election_trouble = Trouble("leader election")
        self._driver_trouble = Trouble("driver update (resyncing)")
        self._write_trouble = Trouble("assignment writes (retrying)")
        self._late_trouble = Trouble("probe rounds")
        self._alive_seen: set[str] = set()
        self._next_probe = 0.0      # monotonic times of the next probe round and
        self._next_leader = 0.0     # leadership step (see `_housekeeping`)
        self._watchdog = WatchdogTicker()
        self.map_checker = MapChecker(settings.map_check_interval_s, self._wake)

    # lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        kinds: list[type[Record]] = [NodeRecord, KeydRecord, Assignment, ChildSaRecord,
                                     SeqRecord]
        for cls in kinds:
            kind = cls.KIND

            def sink(ev: WatchEvent, kind: str = kind) -> None:
                self._events.put((kind, ev))
                self._wake()
            self._watchers.append(self.store.watch(cls, sink))

    def _wake(self) -> None:
        """Wake the loop from another thread (a watch event, a finished map check)."""
        with contextlib.suppress(OSError):    # full: a wake-up is pending anyway
            self._wake_w.send(b"\0")

    def stop(self) -> None:
        for w in self._watchers:
            w.stop()
        if self.leadership.is_leader:
            self.leadership.resign()
        if self.applier is not None:
            self.applier.close()
        self.prober.close()
        if self.keyd_probe is not None:
            self.keyd_probe.close()
        self._wake_r.close()
        self._wake_w.close()

    def run(self, stop: threading.Event) -> None:
        self._next_probe = time.monotonic()
        self._next_leader = 0.0
        ready_told = False
        while not stop.is_set():
            if not ready_told and self.view.ready:
                # systemd Type=notify: the first sync of the view is done
                notify_ready("leader" if self.leadership.is_leader else "standby")
                ready_told = True
            self.turn()

    def turn(self) -> None:
        """One pass of the loop: what is due (leadership, probes), fold watch events, tick,
        then read probe replies until the next thing is due or a watch event arrives."""
        self._fold_events()
        self._housekeeping()
        self.tick()
        self.prober.receive(min(self._next_probe, self._next_leader) - time.monotonic(),
                            self.health, self.clock, wake=self._wake_r)

    def _housekeeping(self) -> None:
        """What must not wait for a long tick: the watchdog, keeping (or seeking) leadership
        and the probe round, when due. Also called between the batches of a long write (a
        mass failover is thousands of assignments); it folds no watch events (mid-write,
        that could bring back a write before the view marks it as ours)."""
        now_m = time.monotonic()
        self._watchdog.tick(now_m)
        if now_m >= self._next_leader:
            self._next_leader = now_m + self._leadership_step()
        if now_m >= self._next_probe:
            if self.prober.round(self._probe_targets(), self.health, self.clock(),
                                 time.monotonic()):
                self._late_trouble.ok()
            else:
                self._late_trouble.failed("late (the sprayer's loop stalled): answers "
                                          "not judged, sprayer_probe_rounds_late_total")
            self._probe_keyd()
            self._next_probe = max(self._next_probe + self.settings.probe_interval_s, now_m)
        if self.applier is not None and self._applied is not None:
            self._repair_map(self.map_checker.step(now_m, self.applier.map_check))

    def _repair_map(self, diff: MapDiff | None) -> None:
        if diff is None or self.applier is None:
            return
        log.warning("the kernel's SPI map differs from the plan (%d missing, %d steered to "
                    "another node, %d unknown): rewriting it whole", diff.missing, diff.wrong,
                    diff.extra)
        self.metrics.map_repairs.inc()
        for kind in ("missing", "wrong", "extra"):
            if n := getattr(diff, kind):
                self.metrics.map_differences.labels(kind).inc(n)
        self.applier.resync()
        self._applied = None
        self.map_checker.due_now()

    # pieces of a tick ---------------------------------------------------------------------
    def _fold_events(self) -> None:
        while True:
            try:
                kind, ev = self._events.get_nowait()
            except queue.Empty:
                return
            self.view.apply(kind, ev)
            if isinstance(ev, RecordPut) and isinstance(ev.record, KeydRecord) \
                    and self.refusals.registered(ev.record.id):
                log.info("keyd instance registered again: back in",
                         extra={"keyd": ev.record.id})
            if kind == "nodes":
                for n in self.view.nodes:
                    self.health.add(n, self.clock())

    def _probe_targets(self) -> dict[str, tuple[str, int]]:
        return {n.id: (n.address, n.health_port) for n in self.view.nodes.values()}

    def _probe_keyd(self) -> None:
        """As leader: a NAT keepalive to each registered keyd instance along its mark route;
        one whose port is refused is out until it registers again (or the hold ends)."""
        if self.keyd_probe is None or self.applier is None or not self.leadership.is_leader:
            return
        marks = getattr(self.applier, "marks", None)
        steered = {b.address for b in getattr(self.applier, "keyd", ())}
        if marks is None:
            return
        # only instances IKE goes to now: their mark routes are installed (an instance that
        # is out has none; its probe would follow some other route)
        targets = {r.id: marks.mark(f"keyd:{r.address}") for r in self.view.keyd.values()
                   if r.address in steered}
        now = self.clock()
        for keyd_id in self.keyd_probe.round(targets):
            if keyd_id in self.view.keyd and self.refusals.refused(keyd_id, now):
                self.metrics.keyd_refused.inc()
                log.warning("keyd instance refuses IKE (port unreachable): taken out", extra={
                    "keyd": keyd_id, "address": self.view.keyd[keyd_id].address})

    def _leadership_step(self) -> float:
        """Keep or seek leadership; return seconds until the next step."""
        try:
            leader = self.leadership.step()
            self._election_trouble.ok()
        except StoreError as exc:
            self.metrics.etcd_errors.inc()
            self._election_trouble.failed(str(exc))
            leader = self.leadership.is_leader
        self.metrics.leader.set(1 if leader else 0)
        if leader and not self._was_leader and self.applier is not None:
            self.applier.resync()   # rebuild the kernel state from etcd, atomically
            self._applied = None
            self.refusals.clear()   # probed afresh from now on
        self._was_leader = leader
        return self.leadership.ttl_s / 3 if leader else min(0.5, self.leadership.ttl_s / 4)

    def tick(self) -> None:
        """Plan, write and apply, as the leader with a complete view."""
        if not (self.leadership.is_leader and self.view.ready):
            return
        now = self.clock()
        nodes = self.view.node_views(self.health.alive, self.health.draining)
        self.metrics.nodes_alive.set(sum(1 for n in nodes if n.alive))
        self._note_alive({n.id for n in nodes if n.alive})
        # planning scans every client: only when something it depends on moved
        key = (self.view.generation, tuple(sorted((n.id, n.alive, n.state.value) for n in nodes)))
        if key == self._planned and not (self.planner.backlog or self.view.in_handoff):
            self.apply()
            return
        self._planned = key
        actions = self.planner.plan(nodes, self.view.placements(), self.view.new_clients(), now,
                                    finals=self.view.handoffs_with_finals(),
                                    rebalance=self.settings.auto_rebalance)
        if any(isinstance(a, CompleteHandoff) and a.exact for a in actions):
            self.apply()    # flip the map first: the new owner already has the counters
        if actions:
            self.write(actions, now)
        self.apply()

    def _note_alive(self, alive: set[str]) -> None:
        """Log each node the leader starts or stops counting as alive."""
        for node_id in sorted(self._alive_seen - alive):
            lease = node_id in self.view.nodes
            log.warning("node %s down: %s", node_id, f"{self.settings.probe_misses} probes "
                        "missed" if lease else "its lease is gone", extra={"node": node_id})
        for node_id in sorted(alive - self._alive_seen):
            log.info("node %s alive", node_id, extra={"node": node_id})
        self._alive_seen = alive

    def apply(self) -> None:
        if self.applier is None:
            return
        alive = tuple(sorted(n for n in self.view.nodes if self.health.alive(n)))
        out = self.refusals.out(self.clock())
        key = (self.view.generation, alive, tuple(sorted(out)))
        if key == self._applied:
            return
        targets = self.view.targets(self.health.alive, keyd_out=out)
        try:
            self.applier.apply(targets)
        except DriverError as exc:
            self.metrics.driver_errors.inc()
            self._driver_trouble.failed(str(exc))
            self.applier.resync()
            return
        if self._applied is None:
            self.map_checker.due_now()    # a full rewrite: read it back
        self._driver_trouble.ok()
        self.metrics.spis.set(len(targets.spis))
        self._applied = key
        self._note_keyd(targets)

    def _note_keyd(self, targets: Targets) -> None:
        """Log (once per change) which keyd instances IKE now goes to."""
        seed = getattr(self.applier, "seed", None)
        if seed is None:
            return
        steered = tuple(b.address for b in keyd_for(targets, seed))
        self.metrics.keyd_live.set(len(targets.keyd))
        if steered != self._keyd_steered:
            self._keyd_steered = steered
            log.info("IKE steered to keyd", extra={
                "keyd": ",".join(steered),
                "source": "keyd/ records" if targets.keyd else "configured seed"})

    # writing assignments -------------------------------------------------------------------
    def _record_for(self, action: PlanAction, now: float) -> tuple[Assignment, int] | None:
        if isinstance(action, Assign):
            return Assignment(action.ike_sa_id, action.node, action.epoch, "active", None,
                              now), 0
        if not isinstance(action, Failover | StartHandoff | CompleteHandoff):
            return None
        cur = self.view.assigns.get(action.ike_sa_id)
        if cur is None or cur[1] < 0:
            return None   # gone, or our own write not yet seen back
        a, rev = cur
        if isinstance(action, Failover):
            return replace(a, node=action.to_node, epoch=action.epoch, phase="active",
                           previous_node=action.from_node, updated_at=now), rev
        if isinstance(action, StartHandoff):
            return replace(a, node=action.to_node, epoch=action.epoch, phase="handoff",
                           previous_node=action.from_node, updated_at=now), rev
        return replace(a, phase="active", updated_at=now), rev

    def write(self, actions: list[PlanAction], now: float) -> None:
        pending: list[tuple[PlanAction, Assignment, int]] = []
        for act in actions:
            r = self._record_for(act, now)
            if r is not None:
                pending.append((act, *r))
        for i in range(0, len(pending), WRITE_BATCH):
            if i:
                self._housekeeping()   # a mass move must not starve probes
            if not self.leadership.is_leader:
                return
            batch = pending[i:i + WRITE_BATCH]
            if not self._commit(batch) and len(batch) > 1:
                for one in batch:       # someone else changed one of them: go one by one
                    if not self.leadership.is_leader:
                        return
                    self._commit([one])

    def _commit(self, batch: list[tuple[PlanAction, Assignment, int]]) -> bool:
        guards = [Guard(self.store.key_of(rec), rev) for _, rec, rev in batch]
        try:
            ok = self.store.commit(puts=[rec for _, rec, _ in batch],
                                   guards=[*guards, self.leadership.guard])
        except StoreError as exc:
            self.metrics.etcd_errors.inc()
            self._write_trouble.failed(str(exc))
            return True  # nothing to split: etcd itself is the problem
        self._write_trouble.ok()
        if not ok:
            self.metrics.write_conflicts.inc()
            return False
        for act, rec, _ in batch:
            # seen as ours until the watch brings the new mod_revision
            self.view.set_assignment(rec, -1)
            self.metrics.moves.labels(type(act).__name__).inc()
            log.info("assignment", extra={"ike_sa": rec.ike_sa_id, "node": rec.node,
                                          "epoch": rec.epoch, "phase": rec.phase,
                                          "action": type(act).__name__,
                                          "previous": rec.previous_node or "-",
                                          **({"exact": act.exact}
                                             if isinstance(act, CompleteHandoff) else {})})
        return True
