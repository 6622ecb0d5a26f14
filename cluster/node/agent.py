"""The node agent: etcd (SAs, assignments, membership, checkpoints) around the data path.

Threads: the data path (`Datapath`, owns every SA object), one control thread (this module's
logic; fed by the watch callbacks, never blocks on etcd), one checkpoint writer, and a small
pool for etcd reads (take-overs, on-demand SA fetches, re-registration). Anything that talks
to etcd runs off the control thread, so an etcd outage never delays fencing or forwarding.
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
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cluster import systemd
from cluster.esp import IvSource, SaCounters, prefix_from_revision
from cluster.node import tun as tunmod
from cluster.node.config import NodeConfig, NodeSection
from cluster.node.counters import (
    Checkpointer,
    Due,
    TakeOver,
    Traffic,
    is_final_for,
    seq_record,
    take_over,
)
from cluster.node.datapath import Datapath
from cluster.node.handoff import (
    RESEND_S,
    FinalGate,
    Ready,
    is_ready_message,
    pull_ready,
    push_ready,
)
from cluster.node.handoff import RemoteProtocolError as ReadyError
from cluster.node.metrics import Snapshot
from cluster.node.outbound import gateway_for
from cluster.node.policies import PolicyBook
from cluster.node.relay import IkeRelay
from cluster.node.sa import NodeSa, client_addresses
from cluster.store import (
    Assignment,
    ChildSaRecord,
    Guard,
    LeaseLost,
    Membership,
    NodeRecord,
    Policy,
    RecordDeleted,
    RecordMalformed,
    RecordPut,
    SeqRecord,
    Store,
    StoreError,
    Versioned,
    WatchEvent,
    WatchResynced,
)
from sprayer.health import RemoteProtocolError as ProbeError
from sprayer.health import pull_probe, push_reply

log = logging.getLogger("cluster.node")

VERSION = "0.1.0"
HANDOFF_WAIT_S = 1.0  # how long a new owner waits for the old owner's final record
HOLD_S = 2.0  # outbound packets of a client in hand-off are held this long at most
FORWARD_S = 5.0  # an old owner forwards a handed-off client's traffic this long
#: after routing a handed-off client's addresses to the new owner, the old owner holds what
#: still reaches its TUN (routed before the change) and re-injects it once more this later
LATE_S = 0.05
FETCH_RETRY_S = 5.0  # an unknown SPI is read from etcd at most once per this period
RETRY_S = 0.5
IV_RENEW_AT = 1 << 31  # IVs drawn under one prefix before a fresh one is taken
#: unplanned take-overs whose seq records are read together (etcd transactions of 128 gets)
SEQ_READ_BATCH = 1024
#: clients started per data-path round trip (the data path answers health probes: short
#: round trips keep it answering during a mass take-over)
APPLY_BATCH = 128


@dataclass(slots=True)
class Stats:
    checkpoints_written: int = 0
    checkpoint_failures: int = 0
    sa_fetches: int = 0
    takeovers_exact: int = 0
    takeovers_jump: int = 0
    fenced: int = 0
    ready_sent: int = 0  # READY datagrams sent as a hand-off's new owner
    ready_malformed: int = 0  # datagrams on the health port that began as READY but were not


def merge_window(a: SaCounters, b: SaCounters, size: int) -> SaCounters:
    """Union of two views of one SA (what this node remembers, what etcd says): the larger
    out_seq and every inbound number either has seen."""
    top = max(a.in_highest, b.in_highest)
    mask = (1 << size) - 1
    bitmap = 0
    for c in (a, b):
        shift = top - c.in_highest
        if shift < size:
            bitmap |= (c.in_bitmap << shift) & mask
    return SaCounters(max(a.out_seq, b.out_seq), top, bitmap)


def _reinject(dp: Datapath, addr: bytes, hold_s: float = 0.0) -> None:
    """Give what was held for `addr` back to the kernel (now routed to the new owner); with
    `hold_s`, keep holding what still arrives (it was routed here before the route changed
    and sits in the TUN queue) until the next `_reinject`."""
    n = dp.reinject({addr})
    if hold_s:
        dp.hold({addr}, hold_s)
    if n:
        log.debug("%d held packet(s) for %s forwarded to the new owner", n, addr.hex())


class NodeAgent:
    """One cluster node. `start()` brings it up; `stop()` takes it down and leaves the
    cluster (lease revoked)."""

    def __init__(self, config: NodeConfig, store: Store, *,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.config = config
        self.cfg: NodeSection = config.node
        self.store = store
        self.clock = clock
        self.wall = wall
        self.stats = Stats()
        c = self.cfg
        self.checkpointer = Checkpointer(c.id, c.checkpoint_packets, c.checkpoint_ms,
                                         c.jump_packets)
        self.datapath: Datapath | None = None
        self.membership: Membership | None = None
        self.iv_source: IvSource | None = None
        self.relay: IkeRelay | None = None
        self.draining = False
        #: set when this node's record was deleted (`clusterctl node remove`) while its lease
        #: lived: it stays out of the cluster until restarted
        self.removed = False
        self.lease_ok = threading.Event()
        self.ready = threading.Event()
        # control-thread state
        self.records: dict[int, ChildSaRecord] = {}
        #: policy/ and the SAs bound to each policy (cluster.node.policies)
        self.policies = PolicyBook()
        self.by_ike: dict[str, set[int]] = {}
        self.assigns: dict[str, tuple[Assignment, int]] = {}
        self.sending: dict[str, int] = {}  # ike_sa_id -> epoch this node sends under
        self.acquiring: dict[str, int] = {}  # ike_sa_id -> epoch being taken over
        self.routed: set[bytes] = set()  # client addresses routed to the TUN
        #: node id -> (back-end address, health port), from nodes/: where a handed-off
        #: client is forwarded, and where its new owner sends READY
        self.node_health: dict[str, tuple[str, int]] = {}
        #: back-end address → back-end IPv6 address of every node that has one (a planned
        #: hand-off forwards a client's IPv6 virtual address there)
        self.back_end6: dict[str, str | None] = {}
        #: planned hand-offs away from us: final records waiting for the new owner's READY
        self.finals: FinalGate[tuple[str, Callable[[], None]]] = FinalGate(
            wait_s=config.node.ready_wait_ms / 1000)
        #: planned hand-offs to us: ike_sa_id -> (epoch, old owner's health address, READY,
        #: next send, sent until) while the take-over waits for the final record
        self._announcing: dict[str, tuple[int, tuple[str, int], bytes, float, float]] = {}
        #: client address -> when to re-inject once more after routing it to a new owner
        self._late: dict[bytes, float] = {}
        self._ready_sock: socket.socket | None = None
        #: client address -> (new owner's address, until): routed there after a hand-off away
        self.forwarded: dict[bytes, tuple[str, float]] = {}
        self._client_routes: dict[str, set[bytes]] = {}
        self._route_refs: Counter[bytes] = Counter()
        self._routes: queue.SimpleQueue[tuple[bytes, str, str] | None] = queue.SimpleQueue()
        self._fetched: dict[int, float] = {}
        self._control: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._writes: queue.SimpleQueue[list[tuple[SeqRecord, Guard]] | None] = \
            queue.SimpleQueue()
        self._pool = ThreadPoolExecutor(4, thread_name_prefix="node-etcd")
        #: unplanned take-overs waiting for their seq records: read together (`_read_seqs`)
        self._seq_reads: queue.SimpleQueue[tuple[str, Assignment, set[int]]] = \
            queue.SimpleQueue()
        self._seq_reading = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._watchers: list[object] = []
        self._tun_fd = -1
        self._stopping = False
        self._writer_busy = False
        self._synced: set[str] = set()
        self._renewing = False
        self._store_lock = threading.Lock()
        self._write_failures = 0

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> None:
        c = self.cfg
        self._tun_fd = tunmod.open_tun(c.tun, c.tun_mtu)
        self._ready_sock = socket.socket(
            socket.AF_INET6 if ":" in c.address else socket.AF_INET, socket.SOCK_DGRAM)
        self._ready_sock.setblocking(False)
        if c.keyd_address:
            self.relay = IkeRelay(c.keyd_address, c.vip)
            self.relay.start()
        self.datapath = Datapath(
            vip=c.vip, natt_port=c.natt_port, tun_fd=self._tun_fd,
            health=(c.address, c.health_port), health_reply=self._health_reply,
            ike_port=c.ike_port if self.relay else None,
            on_unknown_spi=lambda spi: self.post(lambda: self._unknown_spi(spi)),
            on_ike=self.relay.submit if self.relay else None,
            fence_grace_s=c.fence_grace_ms / 1000)
        self._register()
        self.datapath.start()
        for target, name in ((self._control_loop, "node-control"),
                             (self._writer_loop, "node-checkpoints"),
                             (self._route_loop, "node-routes")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        # policy/ first: its full read usually lands before the SAs' (the SAs carry a
        # snapshot of their policy for when it does not)
        self._watchers.append(self.store.watch(Policy, self._sink(Policy.KIND),
                                               report_malformed=True))
        for cls in (ChildSaRecord, Assignment, NodeRecord):
            self._watchers.append(self.store.watch(cls, self._sink(cls.KIND)))

    def _sink(self, kind: str) -> Callable[[WatchEvent], None]:
        def sink(ev: WatchEvent) -> None:
            self.post(lambda: self._on_watch(kind, ev))
        return sink

    def stop(self) -> None:
        self._stopping = True
        for w in self._watchers:
            with contextlib.suppress(Exception):
                w.stop()  # type: ignore[attr-defined]
        self._control.put(None)
        self._writes.put(None)
        self._routes.put(None)
        for t in self._threads:
            t.join(5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.membership is not None:
            with contextlib.suppress(StoreError):
                self.membership.stop(revoke=True)
        if self.datapath is not None:
            self.datapath.stop()
        if self.relay is not None:
            self.relay.stop()
        changes = [tunmod.RouteChange("del", addr) for addr in list(self.routed)]
        changes += [tunmod.RouteChange("unvia", addr, via)
                    for addr, (via, _) in list(self.forwarded.items())]
        try:
            for text in tunmod.apply_routes(changes, self.cfg.tun)[:5]:
                log.warning("%s", text)
        except tunmod.TunError as e:
            log.warning("client routes left behind: %s", e)
        if self._tun_fd >= 0:
            os.close(self._tun_fd)
            self._tun_fd = -1
        if self._ready_sock is not None:
            self._ready_sock.close()
            self._ready_sock = None

    def _reconnect(self, failed: Store) -> None:
        """Replace a connection that keeps failing with a fresh one: after an etcd outage a
        gRPC channel can sit in reconnect back-off for tens of seconds after etcd is back."""
        with self._store_lock:
            if self.store is not failed:
                return  # another thread did it already
            self.store = failed.clone()
        with contextlib.suppress(Exception):
            failed.close()

    def post(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the control thread."""
        self._control.put(fn)

    def _record(self) -> NodeRecord:
        c = self.cfg
        return NodeRecord(c.id, c.address, c.capacity, "draining" if self.draining else "ready",
                          c.health_port, VERSION, self.wall(), address6=c.address6)

    def _register(self) -> None:
        """Take a lease, write nodes/<id> on it; the revision of our own write is this
        incarnation's IV prefix (cluster.esp.nonce)."""
        m = Membership(self.store, self._record(), self.cfg.lease_ttl_s, self._lease_lost)
        lease = m.start()
        revision = self.store.put(m.record, lease=lease)
        prefix = prefix_from_revision(revision)
        if self.iv_source is None:
            self.iv_source = IvSource(prefix)
        self.membership = m
        self.lease_ok.set()
        log.info("registered %s (lease %x, IV prefix %s)", self.cfg.id, lease, prefix.hex())

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

    def _on_watch(self, kind: str, ev: WatchEvent) -> None:
        if isinstance(ev, RecordPut):
            r = ev.record
            if isinstance(r, ChildSaRecord):
                self._sa_put(r)
            elif isinstance(r, Assignment):
                self._assignment(r, ev.revision)
            elif isinstance(r, NodeRecord):
                self.node_health[r.id] = (r.address, r.health_port)
                self.back_end6[r.address] = r.address6
                if r.id == self.cfg.id:
                    self.draining = r.state == "draining"
            elif isinstance(r, Policy):
                self.policies.put(ev.name, r)
                self._policy_changed(ev.name)
        elif isinstance(ev, RecordMalformed):
            if kind == "policy":
                self.policies.malformed(ev.name, ev.reason)
                self._policy_changed(ev.name)
        elif isinstance(ev, RecordDeleted):
            if kind == "policy":
                self.policies.delete(ev.name)
                self._policy_changed(ev.name)
            elif kind == "sa":
                with contextlib.suppress(ValueError):
                    self._sa_deleted(int(ev.name, 16))
            elif kind == "assign":
                self._assignment_gone(ev.name)
            elif kind == "nodes":
                self.node_health.pop(ev.name, None)
                if ev.name == self.cfg.id and not self._stopping and self.lease_ok.is_set():
                    self._pool.submit(self._check_removed, ev.key)
        elif isinstance(ev, WatchResynced):
            if kind == "sa":
                # the full list at a revision: anything else we hold is gone
                prefix = self.store.keyspace.kind_prefix("sa")
                present = {k[len(prefix):] for k in ev.keys}
                for spi in [s for s in self.records if f"{s:08x}" not in present]:
                    self._sa_deleted(spi)
            elif kind == "assign":
                prefix = self.store.keyspace.kind_prefix("assign")
                present = {k[len(prefix):] for k in ev.keys}
                for k in [k for k in self.assigns if k not in present]:
                    self._assignment_gone(k)
            elif kind == "policy":
                prefix = self.store.keyspace.kind_prefix("policy")
                self.policies.resynced({k[len(prefix):] for k in ev.keys})
                for name in self.policies.names_bound():  # snapshots give way to policy/
                    self._policy_changed(name)
            self._synced.add(kind)
            if len(self._synced) == 4 and not self.ready.is_set() and not self.removed:
                self.ready.set()
                # the lease exists (start() registered before watching) and SAs, assignments,
                # nodes and policies are synced: tell systemd (Type=notify) once
                systemd.notify_ready(f"node {self.cfg.id}: lease held, {len(self.records)} "
                                     f"SAs loaded, sending for {len(self.sending)} clients")

    def _check_removed(self, key: str) -> None:
        """Our record is gone while our lease seemed alive (pool thread). Removed by an
        operator (`clusterctl node remove`) if the lease still lives and nothing wrote the
        record again; an expired lease is the membership's business (it re-registers)."""
        for _ in range(10):
            m = self.membership
            if m is None or self._stopping:
                return
            store = self.store
            try:
                if store.get(NodeRecord, self.cfg.id) is not None:
                    return  # registered again meanwhile
                alive = store.keepalive(m.lease_id) > 0
            except StoreError as e:
                log.warning("cannot tell why this node's record %s is gone: %s", key, e)
                time.sleep(RETRY_S)
                continue
            if alive and self.membership is m:
                self.post(functools.partial(self._removed_from_cluster, key))
            return

    def _removed_from_cluster(self, key: str) -> None:
        """Stay out, visibly, until restarted: no health answers (the sprayer sees the node
        down and assigns it nothing), no new registration, `removed` in the metrics. What it
        still owns moves away by the sprayer's fail-over; until then it keeps carrying it."""
        if self.removed or self._stopping:
            return
        self.removed = True
        self.ready.clear()
        log.error("this node's record %s was deleted while its lease lives (clusterctl node "
                  "remove): out of the cluster until cluster-node is restarted (no health "
                  "answers, no new clients, no new registration); %d client(s) still sent "
                  "for move by fail-over", key, len(self.sending))
        systemd.notify_status(f"node {self.cfg.id}: removed from the cluster (clusterctl node "
                              "remove); restart to rejoin")

    # SAs ----------------------------------------------------------------------------------
    def _policy_changed(self, name: str) -> None:
        """Give every SA bound to policy `name` the filter it now runs (data-path thread)."""
        assert self.datapath is not None
        spis = self.policies.bound(name)
        if not spis:
            return
        records = self.records
        filters = {spi: self.policies.filter_for(records[spi]) for spi in spis}
        dp = self.datapath

        def apply() -> None:
            for spi, f in filters.items():
                sa = dp.table.get(spi)
                if sa is not None and sa.record.policy == name:
                    sa.policy = f
        dp.call(apply)

    def _sa_put(self, r: ChildSaRecord) -> None:
        assert self.datapath is not None and self.iv_source is not None
        try:
            sa = NodeSa(r, self.cfg.replay_window, self.iv_source,
                        self.policies.filter_for(r))
        except Exception as e:  # a record the ESP core cannot run: skip, keep the old one
            log.error("cannot install SA %08x: %s", r.spi_in, e)
            return
        old = self.records.get(r.spi_in)
        self.records[r.spi_in] = r
        self.policies.bind(r.spi_in, old, r)
        if old is not None and old.ike_sa_id != r.ike_sa_id:
            self.by_ike.get(old.ike_sa_id, set()).discard(r.spi_in)
        self.by_ike.setdefault(r.ike_sa_id, set()).add(r.spi_in)
        peer_moved = old is None or (old.peer_addr, old.peer_port) != (r.peer_addr, r.peer_port)
        # an IKE SA rekey moves its Child SAs to the new IKE SA id: ownership is per IKE SA,
        # so the SA is sent on again only once taken over under the new id's assignment
        moved = old is not None and old.ike_sa_id != r.ike_sa_id
        if moved:
            self.checkpointer.disown(r.spi_in)
        dp = self.datapath

        def install() -> None:
            prev = dp.table.get(r.spi_in)
            if prev is not None:  # an update: the SA's sequence state carries over
                sa.restore(prev.counters())
                sa.traffic_base = prev.traffic()
                sa.send_limit = 0 if moved else prev.send_limit
                if not peer_moved:
                    sa.peer = prev.peer
            dp.install(sa)
            if sa.send_limit:
                dp.send_on(sa)
        dp.call(install)
        k = r.ike_sa_id
        if moved and old is not None:
            self._route_client(old.ike_sa_id)
        if old is not None and not moved:
            if k in self.sending:
                self._route_client(k)  # the record may name other client addresses now
        elif k in self.sending:
            # a new Child SA (rekey) of a client we send for, or one moved to it
            a, _ = self.assigns[k]
            self._acquire(k, a, spis={r.spi_in})
        else:
            a_rev = self.assigns.get(k)
            if a_rev is not None and a_rev[0].node == self.cfg.id and k not in self.acquiring:
                self._acquire(k, a_rev[0])

    def _sa_deleted(self, spi: int) -> None:
        assert self.datapath is not None
        r = self.records.pop(spi, None)
        if r is not None:
            self.policies.unbind(spi, r)
        self.checkpointer.disown(spi)
        dp = self.datapath

        def remove() -> None:
            dp.remove(spi)
        dp.call(remove)
        if r is not None:
            spis = self.by_ike.get(r.ike_sa_id)
            if spis is not None:
                spis.discard(spi)
                if not spis:
                    del self.by_ike[r.ike_sa_id]
            self._route_client(r.ike_sa_id)

    def _unknown_spi(self, spi: int) -> None:
        """The seed's on-demand retrieval: read sa/<spi> once (per FETCH_RETRY_S)."""
        now = self.clock()
        if spi in self.records or now - self._fetched.get(spi, -1e9) < FETCH_RETRY_S:
            return
        self._fetched[spi] = now
        if len(self._fetched) > 100_000:
            self._fetched = {s: t for s, t in self._fetched.items() if now - t < FETCH_RETRY_S}
        self.stats.sa_fetches += 1

        def fetch() -> None:
            try:
                v = self.store.get(ChildSaRecord, spi)
            except Exception as e:
                log.info("on-demand read of sa/%08x failed: %s", spi, e)
                return
            if v is not None:
                self.post(lambda: self._sa_put(v.record) if spi not in self.records else None)
        self._pool.submit(fetch)

    # ownership ----------------------------------------------------------------------------
    def _assignment(self, a: Assignment, revision: int) -> None:
        k = a.ike_sa_id
        prev = self.assigns.get(k)
        if prev is not None and a.epoch < prev[0].epoch:
            return  # an older epoch never wins (fencing token)
        self.assigns[k] = (a, revision)
        parked = self.finals.waiting.get(k)
        if parked is not None and parked.epoch != a.epoch:
            # the hand-off away from us was superseded: the parked write runs now, finds the
            # assignment changed (its guard) and drops what was held
            self._run_parked(self.finals.drop(k))
        me = self.cfg.id
        if a.node == me:
            if self.sending.get(k) == a.epoch or self.acquiring.get(k) == a.epoch:
                return  # the phase flipped (handoff -> active): nothing changes here
            if k in self.sending:
                self._fence(k)
            self._acquire(k, a)
            return
        if k in self.sending or k in self.acquiring:
            planned = a.phase == "handoff" and a.previous_node == me
            peer = self.node_health.get(a.node) if planned else None
            to = peer[0] if peer is not None else None
            kept = self._fence(k, forward_to=to)
            if planned:
                self._write_final(k, a, revision, kept, to)

    def _assignment_gone(self, k: str) -> None:
        self.assigns.pop(k, None)
        self._run_parked(self.finals.drop(k))
        if k in self.sending or k in self.acquiring:
            self._fence(k)

    def _fence(self, k: str, forward_to: str | None = None) -> set[bytes]:
        """Stop sending for client k now (a newer epoch, or no assignment).

        `forward_to`: a planned hand-off to the node at that back-end address. The router
        keeps sending the client's return traffic here until the sprayer flips its route, so
        the client's addresses stay routed to the TUN, where the data path holds what arrives,
        until the final record is written (`_forward`); then they are routed to the new owner
        and what was held is given back to the kernel. Returns those addresses."""
        assert self.datapath is not None
        self.sending.pop(k, None)
        self.acquiring.pop(k, None)
        spis = set(self.by_ike.get(k, ()))
        for spi in spis:
            self.checkpointer.disown(spi)
        dp = self.datapath
        addrs = set(self._client_routes.get(k, ())) if forward_to else set()

        def fence() -> None:
            for spi in spis:
                sa = dp.table.get(spi)
                if sa is not None:
                    dp.stop_sending(sa)
            if addrs:
                dp.hold(addrs, HOLD_S)
            else:
                dp.release({a for spi in spis if (sa := dp.table.get(spi)) is not None
                            for a in sa.client_addresses})
        dp.run(fence)
        self.stats.fenced += 1
        return self._route_client(k, forward_to=forward_to)

    def _forward(self, addrs: set[bytes], to: str | None, final_written: bool) -> None:
        """After the final record (or its failure): route the handed-off client's addresses
        to the new owner (the new owner has routed them to its own TUN by now: it started its
        take-over from the same watch event, and the final is what it waits for), or, with
        no final or no address for the new owner, remove them and drop what was held."""
        assert self.datapath is not None
        dp = self.datapath
        for addr in addrs:
            if addr in self._route_refs:
                continue  # ours again meanwhile
            self.routed.discard(addr)
            via = gateway_for(addr, to, self.back_end6.get(to)) if to else None
            if final_written and via:
                self.forwarded[addr] = (via, self.clock() + FORWARD_S)
                self._routes.put((addr, "via", via))
            else:
                self._routes.put((addr, "del", ""))
                dp.call(functools.partial(dp.release, {addr}))

    def _write_final(self, k: str, a: Assignment, revision: int,
                     kept: set[bytes] | None = None, to: str | None = None) -> None:
        """Planned hand-off away from us: once the new owner said READY (it holds and routes
        the client's traffic; cluster.node.handoff) or `handoff.WAIT_S` passed, our exact
        counters as `final` records, guarded by the hand-off assignment (DESIGN.md, "Moving
        a client without rekeying"); then the addresses `kept` routed to our TUN are
        forwarded `to` the new owner."""
        write = functools.partial(self._commit_final, k, a, revision, kept, to)
        if a.node not in self.node_health:
            write()  # a new owner we know nothing of (no nodes/ record) sends no READY
        elif not self.finals.wait(k, a.epoch, a.node, (k, write), self.clock()):
            write()  # its READY came first

    def _on_ready(self, msg: Ready) -> None:
        parked = self.finals.ready(msg, self.clock())
        if parked is not None:
            log.debug("READY from %s for %s at epoch %d", msg.node_id, msg.ike_sa_id,
                      msg.epoch)
        self._run_parked(parked)

    @staticmethod
    def _run_parked(parked: tuple[str, Callable[[], None]] | None) -> None:
        if parked is not None:
            parked[1]()

    def _commit_final(self, k: str, a: Assignment, revision: int,
                      kept: set[bytes] | None, to: str | None) -> None:
        assert self.datapath is not None
        dp = self.datapath
        spis = set(self.by_ike.get(k, ()))
        counters = dp.run(lambda: {s: (sa.counters(), sa.traffic()) for s in spis
                                   if (sa := dp.table.get(s)) is not None})
        wall = self.wall()
        records = [seq_record(s, self.cfg.id, a.epoch, c, "final", wall, t)
                   for s, (c, t) in counters.items()]
        guard = Guard(self.store.keyspace.assign(k), revision)

        def write() -> None:
            ok = False
            try:
                for attempt in range(10):
                    try:
                        ok = self.store.commit(records, guards=[guard])
                        log.info("final counters for %s at epoch %d: %s", k, a.epoch,
                                 "written" if ok else "assignment changed, not written")
                        return
                    except StoreError as e:
                        log.warning("final counters for %s not written (%s), retry %d", k, e,
                                    attempt)
                        time.sleep(RETRY_S)
            finally:
                if kept:
                    self.post(functools.partial(self._forward, kept, to, ok))
        self._pool.submit(write)

    def _acquire(self, k: str, a: Assignment, spis: set[int] | None = None) -> None:
        """Become the sender for client k under assignment a: read seq/ (waiting up to
        HANDOFF_WAIT_S for the old owner's final record in a planned hand-off)."""
        self.acquiring[k] = a.epoch
        wanted = set(spis if spis is not None else self.by_ike.get(k, ()))
        if not wanted:
            # no SA yet: sending starts when the SA arrives (_sa_put)
            self.acquiring.pop(k, None)
            self.sending[k] = a.epoch
            return
        wait_s = HANDOFF_WAIT_S if a.phase == "handoff" and a.previous_node else 0.0
        # the client's return traffic may reach us before we send (the old owner forwards
        # it, or the router flips first): route it here and hold it until we do
        assert self.datapath is not None
        dp = self.datapath
        addrs = {addr for s in wanted if (r := self.records.get(s)) is not None
                 for addr in client_addresses(r)}
        dp.call(functools.partial(dp.hold, addrs, HOLD_S))
        self._route_client(k)
        if wait_s and a.previous_node != self.cfg.id:
            # READY to the old owner once the hold and these routes are in place (the route
            # thread applies them in order; cluster.node.handoff)
            self._routes.put((b"", "ready", k))

        if not wait_s:
            # no final record to wait for: read with every other take-over queued meanwhile
            self._seq_reads.put((k, a, wanted))
            if self._seq_reading.acquire(blocking=False):
                self._pool.submit(self._read_seqs)
            return

        def read() -> None:
            deadline = self.clock() + wait_s
            changed = threading.Event()
            watches = self._watch_seq(wanted, changed) if wait_s else []
            try:
                while not self._stopping:
                    store = self.store
                    changed.clear()
                    try:
                        seqs = {s: (v.record if (v := store.get(SeqRecord, s)) else None)
                                for s in wanted}
                    except StoreError as e:
                        log.warning("take-over of %s waits for etcd: %s", k, e)
                        self._reconnect(store)
                        time.sleep(RETRY_S)
                        continue
                    except Exception as e:  # a malformed seq record: treat as absent
                        log.warning("take-over of %s: unreadable seq record (%s)", k, e)
                        seqs = dict.fromkeys(wanted)
                    left = deadline - self.clock()
                    if all(is_final_for(r, a) for r in seqs.values()) or left <= 0:
                        self.post(functools.partial(self._acquired, k, a, seqs))
                        return
                    # the final record arrives by the watch; a slow poll covers a lost watch
                    changed.wait(min(left, 0.2 if watches else 0.02))
            finally:
                self._unwatch(watches)
        self._pool.submit(read)

    def _read_seqs(self) -> None:
        """Pool thread: the seq records of every queued unplanned take-over, read in a few
        etcd transactions; the clients are then started in one batch (`_acquired_many`)."""
        try:
            while not self._stopping:
                batch: list[tuple[str, Assignment, set[int]]] = []
                while len(batch) < SEQ_READ_BATCH:
                    try:
                        batch.append(self._seq_reads.get_nowait())
                    except queue.Empty:
                        break
                if not batch:
                    return
                spis = {s for _, _, wanted in batch for s in wanted}
                while not self._stopping:
                    store = self.store
                    try:
                        # a record that does not decode reads as absent (the take-over
                        # jumps); the store logs it with its key
                        got = store.get_many(SeqRecord, spis, strict=False)
                    except StoreError as e:
                        log.warning("take-over of %d clients waits for etcd: %s",
                                    len(batch), e)
                        self._reconnect(store)
                        time.sleep(RETRY_S)
                        continue
                    items = [(k, a, {s: (v.record if (v := got.get(s)) else None)
                                     for s in wanted}) for k, a, wanted in batch]
                    self.post(functools.partial(self._acquired_many, items))
                    break
        finally:
            self._seq_reading.release()
            # queued after the last look and before the release: read those too
            if not self._stopping and not self._seq_reads.empty() \
                    and self._seq_reading.acquire(blocking=False):
                self._pool.submit(self._read_seqs)

    def _watch_seq(self, spis: set[int], changed: threading.Event) -> list[tuple[Store, int]]:
        """Watch seq/<spi> of these SAs (a hand-off: the old owner's final record), setting
        `changed` on any write. Empty if etcd cannot set the watch up (the caller polls)."""
        store = self.store
        out: list[tuple[Store, int]] = []
        try:
            for spi in spis:
                key = store.keyspace.seq(spi)
                out.append((store, store.raw.add_watch_callback(
                    key, lambda _resp: changed.set())))
        except Exception as e:
            log.info("watching seq records failed (%s): polling", e)
            self._unwatch(out)
            return []
        return out

    def _unwatch(self, watches: list[tuple[Store, int]]) -> None:
        for store, watch_id in watches:
            with contextlib.suppress(Exception):
                store.raw.cancel_watch(watch_id)

    def _acquired(self, k: str, a: Assignment, seqs: dict[int, SeqRecord | None]) -> None:
        self._acquired_many([(k, a, seqs)])

    def _acquired_many(self, items: list[tuple[str, Assignment,
                                               dict[int, SeqRecord | None]]]) -> None:
        """Start sending for these clients from their seq records (exact counters or a
        jump), APPLY_BATCH clients per data-path round trip; one checkpoint tick after."""
        for i in range(0, len(items), APPLY_BATCH):
            self._start_sending(items[i:i + APPLY_BATCH])
        self._tick()  # a jumped start is written before its first packet

    def _start_sending(self, items: list[tuple[str, Assignment,
                                               dict[int, SeqRecord | None]]]) -> None:
        assert self.datapath is not None
        dp = self.datapath
        now = self.clock()
        window = self.cfg.replay_window
        clients: list[tuple[str, Assignment, dict[int, TakeOver]]] = []
        plans: dict[int, TakeOver] = {}
        persisted: dict[int, SaCounters | None] = {}
        carried: dict[int, Traffic] = {}
        for k, a, seqs in items:
            current = self.assigns.get(k)
            if current is None or current[0].node != self.cfg.id or current[0].epoch != a.epoch:
                continue  # superseded while we read
            if self.acquiring.get(k) != a.epoch and self.sending.get(k) != a.epoch:
                continue
            mine: dict[int, TakeOver] = {}
            for spi, seq in seqs.items():
                if spi not in self.records:
                    continue
                to = take_over(seq, a, self.cfg.jump_packets)
                if to.exact:
                    self.stats.takeovers_exact += 1
                else:
                    self.stats.takeovers_jump += 1
                mine[spi] = plans[spi] = to
                carried[spi] = Traffic.of(seq)
                persisted[spi] = (None if seq is None else
                                  SaCounters(seq.out_seq, seq.in_highest, seq.in_bitmap))
            clients.append((k, a, mine))
        if not clients:
            return

        def apply() -> dict[int, SaCounters]:
            started = {}
            for spi, to in plans.items():
                sa = dp.table.get(spi)
                if sa is None:
                    continue
                start = merge_window(sa.counters(), to.counters, window)
                sa.restore(start)
                # the record's traffic is the SA's life so far; this node counts on from it
                sa.traffic_base = carried[spi] - sa.local_traffic()
                started[spi] = start
            return started
        started = dp.run(apply)
        owner = {spi: (k, a.epoch) for k, a, mine in clients for spi in mine}
        for spi, start in started.items():
            k, epoch = owner[spi]
            self.checkpointer.own(spi, k, epoch, start, persisted[spi], now)
        limits = {spi: self.checkpointer.send_limit(spi) for spi in started}

        def enable() -> None:
            for spi, limit in limits.items():
                sa = dp.table.get(spi)
                if sa is not None:
                    sa.send_limit = limit
                    dp.send_on(sa)
        dp.run(enable)
        for k, a, mine in clients:
            self.acquiring.pop(k, None)
            self._announcing.pop(k, None)
            self.sending[k] = a.epoch
            self._route_client(k)
            log.info("sending for %s at epoch %d (%s)", k, a.epoch,
                     ", ".join(f"{s:08x}:{'exact' if p.exact else 'jump'}"
                               for s, p in mine.items()))

    def _route_client(self, k: str, forward_to: str | None = None) -> set[bytes]:
        """Routes to the TUN for the addresses of client k while we send for it (or are
        taking it over); the address routes are reference-counted over clients (two may share
        a selector). An address no longer ours loses its route, except with `forward_to`
        (a planned hand-off away): then it stays routed to the TUN, and is returned, for
        `_forward` to route it to the new owner once the final record is written."""
        want: set[bytes] = set()
        if k in self.sending or k in self.acquiring:
            for spi in self.by_ike.get(k, ()):
                r = self.records.get(spi)
                if r is not None:
                    want.update(client_addresses(r))
        had = self._client_routes.pop(k, set())
        if want:
            self._client_routes[k] = want
        for addr in want - had:
            self._route_refs[addr] += 1
            if self._route_refs[addr] == 1:
                self.routed.add(addr)
                self.forwarded.pop(addr, None)
                self._routes.put((addr, "tun", ""))
        kept: set[bytes] = set()
        for addr in had - want:
            self._route_refs[addr] -= 1
            if self._route_refs[addr] <= 0:
                del self._route_refs[addr]
                if forward_to:
                    kept.add(addr)
                else:
                    self.routed.discard(addr)
                    self._routes.put((addr, "del", ""))
        return kept

    def _unforward(self, now: float) -> None:
        """Forwarding routes of handed-off clients expire (the router has long flipped)."""
        for addr, (via, until) in list(self.forwarded.items()):
            if now >= until:
                del self.forwarded[addr]
                if addr not in self._route_refs:
                    self._routes.put((addr, "unvia", via))

    def _route_loop(self) -> None:
        """Applies route changes in the order they were decided (one thread: no reordering
        of an add and a delete of the same address), everything queued so far in one
        rtnetlink batch."""
        try:
            writer = tunmod.RouteWriter(self.cfg.tun)
        except tunmod.TunError as e:
            log.error("client routes cannot be written: %s", e)
            writer = None
        try:
            while True:
                item = self._routes.get()
                items = [item]
                while item is not None:
                    try:
                        item = self._routes.get_nowait()
                    except queue.Empty:
                        break
                    items.append(item)
                batch: list[tunmod.RouteChange] = []
                for it in items:
                    if it is None:
                        self._apply_routes(writer, batch)
                        return
                    addr, action, via = it
                    if action == "ready":  # every route queued before it is applied
                        self._apply_routes(writer, batch)
                        batch = []
                        self.post(functools.partial(self._routes_in_place, via))
                    else:
                        batch.append(tunmod.RouteChange(action, addr, via))  # type: ignore[arg-type]
                self._apply_routes(writer, batch)
        finally:
            if writer is not None:
                writer.close()

    def _apply_routes(self, writer: tunmod.RouteWriter | None,
                      batch: list[tunmod.RouteChange]) -> None:
        if not batch:
            return
        if writer is None:
            log.error("%d client route changes not applied: no rtnetlink socket", len(batch))
        else:
            try:
                failures = writer.apply(batch)
            except tunmod.TunError as e:
                failures = [str(e)]
            for text in failures[:5]:
                log.error("%s", text)
            if len(failures) > 5:
                log.error("... and %d more route changes refused", len(failures) - 5)
        dp = self.datapath
        for change in batch:
            if change.action == "via" and dp is not None:
                # what arrived before the route changed goes to the new owner too; what is
                # still on its way into the TUN is held and re-injected once more (`_tick`)
                dp.call(functools.partial(_reinject, dp, change.address, HOLD_S))
                self.post(functools.partial(self._reinject_later, change.address))

    def _reinject_later(self, addr: bytes) -> None:
        self._late[addr] = self.clock() + LATE_S

    def _late_reinjects(self, now: float) -> None:
        assert self.datapath is not None
        dp = self.datapath
        for addr, at in list(self._late.items()):
            if now >= at:
                del self._late[addr]
                if addr not in self._route_refs:  # not ours again meanwhile
                    dp.call(functools.partial(_reinject, dp, addr))

    def _routes_in_place(self, k: str) -> None:
        """Our take-over of client k (a planned hand-off) holds its traffic and routes it to
        our TUN: tell the old owner, which writes its final record on that."""
        assert self.datapath is not None
        epoch = self.acquiring.get(k)
        cur = self.assigns.get(k)
        if epoch is None or cur is None or cur[0].epoch != epoch or not cur[0].previous_node:
            return
        target = self.node_health.get(cur[0].previous_node)
        if target is None:
            log.info("no health address of %s: it writes its final record for %s without "
                     "READY", cur[0].previous_node, k)
            return
        msg = push_ready(Ready(k, epoch, self.cfg.id))
        now = self.clock()
        self._announcing[k] = (epoch, target, msg, now + RESEND_S, now + HANDOFF_WAIT_S)
        dp = self.datapath
        # through the data-path queue: it runs after the hold queued by `_acquire`
        dp.call(functools.partial(self._send_ready, msg, target))

    def _send_ready(self, msg: bytes, target: tuple[str, int]) -> None:
        sock = self._ready_sock
        if sock is None:
            return
        try:
            sock.sendto(msg, target)
            self.stats.ready_sent += 1
        except OSError as e:
            log.debug("READY to %s:%d not sent: %s", *target, e)

    def _announce(self, now: float) -> None:
        """Send READY again while a planned take-over waits (a datagram may be lost)."""
        for k, (epoch, target, msg, at, until) in list(self._announcing.items()):
            if self.acquiring.get(k) != epoch or now >= until:
                del self._announcing[k]
            elif now >= at:
                self._announcing[k] = (epoch, target, msg, now + RESEND_S, until)
                self._send_ready(msg, target)

    # membership ---------------------------------------------------------------------------
    def _lease_lost(self, ev: LeaseLost) -> None:
        self.post(lambda: self._on_lease_lost(ev.reason))

    def _on_lease_lost(self, reason: str) -> None:
        assert self.datapath is not None
        self.lease_ok.clear()
        dp = self.datapath
        if reason == "expired":
            # etcd says our lease is gone: our clients may have moved. Fence everything.
            for k in list(self.sending) + list(self.acquiring):
                self._fence(k)
            dp.run(dp.fence_all)
        else:
            # etcd is silent: an outage (nobody can move our clients) or our partition.
            # Keep forwarding, but only while the sprayer still steers each client to us
            # (docs/node.md, "Fencing"); the send limits bound the rest.
            def detach() -> None:
                dp.detached = True
            dp.run(detach)
        if self.removed:
            log.info("lease lost; not registering again: this node was removed")
            return
        self._pool.submit(self._reregister)

    def _reregister(self) -> None:
        while not self._stopping:
            store = self.store
            try:
                if self.membership is not None:
                    with contextlib.suppress(Exception):
                        self.membership.stop(revoke=False)
                    self.membership = None
                self._register()
                listing = self.store.list(Assignment)
            except StoreError as e:
                log.warning("re-registration waits for etcd: %s", e)
                self._reconnect(store)
                time.sleep(RETRY_S)
                continue
            self.post(functools.partial(self._rejoined, listing.items))
            return

    def _rejoined(self, items: list[Versioned[Assignment]]) -> None:
        assert self.datapath is not None
        dp = self.datapath

        def attach() -> None:
            dp.detached = False
        dp.run(attach)
        seen = set()
        for v in items:
            seen.add(v.record.ike_sa_id)
            self._assignment(v.record, v.mod_revision)
        for k in list(self.sending):
            if k not in seen:
                self._assignment_gone(k)
        log.info("lease confirmed again; %d clients sent for", len(self.sending))

    # checkpoints --------------------------------------------------------------------------
    def _tick(self) -> None:
        if self.datapath is None:
            return
        now = self.clock()
        if self.forwarded:
            self._unforward(now)
        if self._late:
            self._late_reinjects(now)
        if self._announcing:
            self._announce(now)
        if self.finals.waiting:
            for k, write in self.finals.due(now):
                log.warning("no READY from the new owner of %s within %.1f s: final counters "
                            "written without it (its traffic may briefly find no route there)",
                            k, self.finals.wait_s)
                write()
        iv = self.iv_source
        if iv is not None and iv.used > IV_RENEW_AT and not self._renewing:
            self._renewing = True
            self._pool.submit(self._renew_iv_prefix)
        marks = self.checkpointer.marks
        if not marks or self._writer_busy:
            return
        dp = self.datapath
        forced = self.checkpointer.forced()

        def moved() -> dict[int, tuple[SaCounters, Traffic]]:
            # only SAs that moved since their acknowledged checkpoint (or must be written)
            get = dp.table.by_spi.get
            return {s: (sa.counters(), sa.traffic()) for s, mark in list(marks.items())
                    if (sa := get(s)) is not None
                    and (s in forced
                         or mark != (sa.out_seq, sa.window.highest, sa.window.bitmap))}
        current = dp.run(moved)
        due = self.checkpointer.due({s: c for s, (c, _) in current.items()}, self.clock(),
                                    self.wall(), {s: t for s, (_, t) in current.items()})
        batch = [(d.record, g) for d in due if (g := self._guard(d)) is not None]
        # never unguarded: a checkpoint is only valid under the assignment it was made for
        self.checkpointer.failed([d.record for d in due if self._guard(d) is None])
        if batch:
            self._writer_busy = True
            self._writes.put(batch)

    def _renew_iv_prefix(self) -> None:
        """Half the IV counter is used: take a fresh prefix (the revision of a new write of
        our own record) long before the counter could run out (cluster.esp.nonce)."""
        try:
            m = self.membership
            if m is None or self.removed:
                # a removed node writes no record (it would register again): it keeps the
                # prefix, whose counter lasts 2^32 IVs, and its clients move away meanwhile
                return
            revision = self.store.put(self._record(), lease=m.lease_id)
            prefix = prefix_from_revision(revision)
            assert self.datapath is not None and self.iv_source is not None
            source = self.iv_source
            self.datapath.call(lambda: source.renew(prefix))
            log.info("IV prefix renewed: %s", prefix.hex())
        except StoreError as e:
            log.warning("IV prefix renewal waits for etcd: %s", e)
        finally:
            self._renewing = False

    def _guard(self, d: Due) -> Guard | None:
        a = self.assigns.get(d.ike_sa_id)
        return Guard(self.store.keyspace.assign(d.ike_sa_id), a[1]) if a else None

    def _writer_loop(self) -> None:
        while True:
            batch = self._writes.get()
            if batch is None:
                return
            done: list[SeqRecord] = []
            failed: list[SeqRecord] = []
            for i in range(0, len(batch), 100):
                chunk = batch[i:i + 100]
                records = [r for r, _ in chunk]
                guards = list({g.key: g for _, g in chunk}.values())
                store = self.store
                try:
                    ok = store.commit(records, guards=guards)
                except StoreError as e:
                    log.warning("checkpoints queued, etcd unavailable: %s", e)
                    failed.extend(records)
                    self._write_failures += 1
                    if self._write_failures % 5 == 0:
                        self._reconnect(store)
                    continue
                self._write_failures = 0
                if ok:
                    done.extend(records)
                    continue
                # one client's assignment moved: write the others one by one
                for r, g in chunk:
                    try:
                        single = self.store.commit([r], guards=[g])
                    except StoreError:
                        single = False
                    (done if single else failed).append(r)
            self._post_written(done, failed)

    def _post_written(self, done: list[SeqRecord], failed: list[SeqRecord]) -> None:
        self.post(lambda: self._written(done, failed))

    def _written(self, done: list[SeqRecord], failed: list[SeqRecord]) -> None:
        assert self.datapath is not None
        self._writer_busy = False
        self.checkpointer.acked(done, self.clock())
        self.checkpointer.failed(failed)
        self.stats.checkpoints_written += len(done)
        if failed:
            self.stats.checkpoint_failures += 1
            time.sleep(0)  # retried by the next tick
        limits = {r.spi: self.checkpointer.send_limit(r.spi) for r in done}
        dp = self.datapath

        def raise_limits() -> None:
            for spi, limit in limits.items():
                sa = dp.table.get(spi)
                if sa is not None and sa.send_limit:
                    sa.send_limit = limit
                    if dp.held:
                        dp.flush(sa)  # packets held at the take-over's limit go out now
        dp.call(raise_limits)

    # health and metrics -------------------------------------------------------------------
    def _health_reply(self, data: bytes) -> bytes | None:
        """A datagram on the health port (data-path thread): the sprayer's probe, answered
        while the node is ready, or a new owner's READY (cluster.node.handoff)."""
        if is_ready_message(data):
            try:
                msg = pull_ready(data)
            except ReadyError:
                self.stats.ready_malformed += 1
                return None
            self.post(functools.partial(self._on_ready, msg))
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
        dp = self.datapath
        if dp is None:
            return s
        t = dp.io_totals()
        s.packets_in, s.bytes_in, s.packets_out, s.bytes_out = (
            t.packets_in, t.bytes_in, t.packets_out, t.bytes_out)
        drops: dict[str, int] = {}
        for counter in (dp.table.drops, dp.drops):
            for reason, n in list(counter.items()):
                drops[reason.value] = drops.get(reason.value, 0) + n
        s.drops = drops
        s.sas_installed = len(dp.table)
        owned = self.checkpointer.owned()
        s.sas_owned = len(owned)
        lag = 0
        for sa in dp.sas():
            if sa.spi_in in owned:
                lag = max(lag, self.checkpointer.lag(sa.spi_in, sa.counters()))
        s.checkpoint_lag_packets = lag
        s.checkpoint_lag_seconds = self.checkpointer.oldest_unacked_s(self.clock())
        s.checkpoints_written = self.stats.checkpoints_written
        s.checkpoint_failures = self.stats.checkpoint_failures
        s.checkpoints_queued = self.checkpointer.queued()
        s.sa_fetches = self.stats.sa_fetches
        s.rebinds = t.rebinds
        s.coalesced = t.coalesced
        s.ike_relayed = self.relay.relayed if self.relay else 0
        s.health_probes = t.health_probes
        s.takeovers_exact = self.stats.takeovers_exact
        s.takeovers_jump = self.stats.takeovers_jump
        s.fenced = self.stats.fenced
        s.lease_ok = int(self.lease_ok.is_set())
        s.draining = int(self.draining)
        s.removed = int(self.removed)
        s.finals_without_ready = self.finals.timeouts
        s.policy_drops = dict(dp.policy_drops)
        s.policies_failing_closed = len(self.policies.failing_closed())
        return s

