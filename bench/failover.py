"""bench failover: the sprayer's part of moving clients, on a real etcd and real nftables.

A router namespace runs the sprayer (in this process, nftables driver); three node
namespaces hold the VIP and a health responder (cluster.probe.HealthResponder, the node side
of the probe) each; a sender namespace plays the clients' ESP. Clients are Child SA records.

- nftables SPI map: full atomic sync of 100k SPIs; one incremental batch moving 10k of them;
- planner: one plan over 100k clients, steady and with one of four nodes dead;
- 10k clients off a dead node: from the node's last answered probe to every one of its
  clients re-assigned in etcd and the kernel map steering none of them to it;
- unplanned gap (steering), ≥ 20 runs: ESP for one client every 2 ms; its node stops
  answering probes at t0; gap = first datagram at the new node - t0 (probe detection +
  compare-and-swap write + watch + map update). The node's own take-over (checkpoint + jump,
  cluster/node) comes on top: the whole-path part below measures both together;
- hand-off gap (steering), ≥ 20 runs: the node is drained; a stand-in for the old owner's
  data plane writes exact `final` counters the moment it sees the hand-off (what cluster-node
  does); gap = first datagram at the new node - last datagram at the old one.

Damping is shortened (hold-down 0.2 s) so runs can repeat; detection uses the defaults
(probe every 100 ms, down after 3 misses).

Then the whole path (bench/failover_lab.py): a lab with real keyd, cluster-node agents and the
sprayer; clients made by the project's IKE initiator through keyd ping the protected server in
userspace ESP; unplanned gap (SIGKILL of the owner) and hand-off gap (`clusterctl node drain`)
from their decrypted replies, ≥ 20 runs each; and 10,000 initiator-made clients moved off a
SIGKILLed node, with a check that no other node is declared down meanwhile (no cascade).
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import Row, percentile, row
from bench import wait as poll
from bench.failover_lab import run_lab
from cluster.host import DriverError, inside_netns
from cluster.plan import NodeView, Placement, Planner, choose
from cluster.probe import HealthResponder
from cluster.procs import EtcdServer
from cluster.store import (
    Assignment,
    ChildSaRecord,
    DataKey,
    Keyspace,
    Membership,
    NodeRecord,
    RecordPut,
    SeqRecord,
    Store,
)
from sprayer.apply import KernelApplier
from sprayer.daemon import Sprayer
from sprayer.health import HealthTracker
from sprayer.libnft import Nft
from sprayer.nft import NftDriver
from sprayer.settings import SprayerSettings
from sprayer.userspace import UserspaceApplier
from sprayer.view import Targets

VIP = "203.0.113.10"
NODES = ("node-1", "node-2", "node-3")
KEYD = "10.30.9.5"
RUNS = 20
MOVE_CLIENTS = 10_000
MAP_SPIS = 100_000


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


class Netlab:
    """sender — router — node-1..3 (+ keyd), each node on its own /24, VIP on node loopbacks."""

    def __init__(self) -> None:
        self.prefix = f"bf{uuid.uuid4().hex[:6]}"
        self.made: list[str] = []
        self.addr = {n: f"10.30.{i}.11" for i, n in enumerate(NODES, start=1)}

    def ns(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    def up(self) -> None:
        roles = ("sender", "router", *NODES, "keyd")
        for role in roles:
            sh("ip", "netns", "add", self.ns(role))
            self.made.append(self.ns(role))
            sh("ip", "-n", self.ns(role), "link", "set", "lo", "up")
            sh("ip", "netns", "exec", self.ns(role), "sysctl", "-qw",
               "net.ipv4.conf.all.rp_filter=0")
        r = self.ns("router")
        sh("ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self._link(r, "front", "198.51.100.1", self.ns("sender"), "198.51.100.2")
        hosts = [*((n, a) for n, a in self.addr.items()), ("keyd", KEYD)]
        for i, (role, addr) in enumerate(hosts, start=1):
            gw = addr.rsplit(".", 1)[0] + ".1"
            self._link(r, f"back{i}", gw, self.ns(role), addr)
            sh("ip", "-n", self.ns(role), "addr", "add", f"{VIP}/32", "dev", "lo")

    def _link(self, a: str, a_if: str, a_ip: str, b: str, b_ip: str) -> None:
        sh("ip", "-n", a, "link", "add", a_if, "type", "veth", "peer", "name", "eth0",
           "netns", b)
        sh("ip", "-n", a, "addr", "add", f"{a_ip}/24", "dev", a_if)
        sh("ip", "-n", a, "link", "set", a_if, "up")
        sh("ip", "-n", b, "addr", "add", f"{b_ip}/24", "dev", "eth0")
        sh("ip", "-n", b, "link", "set", "eth0", "up")
        sh("ip", "-n", b, "route", "add", "default", "via", a_ip)
        sh("ip", "netns", "exec", a, "sysctl", "-qw", f"net.ipv4.conf.{a_if}.rp_filter=0")
        sh("ip", "netns", "exec", b, "sysctl", "-qw", "net.ipv4.conf.eth0.rp_filter=0")

    def udp(self, role: str, addr: str, port: int) -> socket.socket:
        with inside_netns(self.ns(role)):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
        return s

    def down(self) -> None:
        for ns in self.made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def child(i: int) -> ChildSaRecord:
    return ChildSaRecord(
        spi_in=0x4000_0000 + i, spi_out=0x7000_0000 + i, ike_sa_id=f"{i + 1:016x}{i + 3:016x}",
        encr="aes128gcm16", integ=None, esn=True, enc_key_in=bytes(20), integ_key_in=b"",
        enc_key_out=bytes(20), integ_key_out=b"", ts_local=["10.20.0.0/16"],
        ts_remote=[f"10.99.{i >> 8 & 255}.{i & 255}/32"], peer_addr="198.51.100.2",
        peer_port=4500, udp_encap=True, virtual_ip=f"10.99.{i >> 8 & 255}.{i & 255}",
        identity=f"c{i}", created_at=time.time(), soft_lifetime_s=3300, hard_lifetime_s=3600)


def wait(pred: Callable[[], bool], timeout_s: float, what: str) -> None:
    """bench.wait at 10 ms steps (the steering figures are timed by these waits)."""
    poll(pred, timeout_s, what, step_s=0.01)


# -- nftables map and planner ----------------------------------------------------------------

def bench_map(lab: Netlab) -> list[Row]:
    applier = KernelApplier(VIP, [KEYD], netns=lab.ns("router"))
    marks = [applier.marks.mark(n) for n in NODES]
    applier.nft.install([applier.marks.mark(f"keyd:{KEYD}")], marks)
    full, moved = [], []
    for rnd in range(5):
        want = {0x1000_0000 + i: marks[(i + rnd) % 3] for i in range(MAP_SPIS)}
        applier.nft._spis = None   # force the full, atomic flush + add
        t = time.perf_counter()
        applier.nft.sync_spis(want)
        full.append(time.perf_counter() - t)
        for i in range(0, MAP_SPIS, MAP_SPIS // 10_000):
            want[0x1000_0000 + i] = marks[(i + rnd + 1) % 3]
        t = time.perf_counter()
        applier.nft.sync_spis(want)
        moved.append(time.perf_counter() - t)
    flips = one_client_flips(lab, applier)
    applier.remove()
    return [
        *flips,
        row("nft map: full sync of 100k SPIs (one atomic batch), median of 5",
            round(sorted(full)[2] * 1000), "ms"),
        row("nft map: move 10k of 100k SPIs (one batch), median of 5",
            round(sorted(moved)[2] * 1000), "ms"),
    ]


def one_client_flips(lab: Netlab, applier: KernelApplier) -> list[Row]:
    """One client moves: its SPI in the map and its /32 route, as the daemon flips them —
    through libnftables + rtnetlink, and through the `nft` and `ip` commands."""
    r = lab.ns("router")
    marks = [applier.marks.mark(n) for n in NODES]
    by_command = NftDriver(VIP, netns=r, nft=Nft(r, use_library=False))
    rows = []
    for label, nft in (("libnftables + rtnetlink", applier.nft), ("nft + ip commands", None)):
        times = []
        for i in range(50):
            node = NODES[i % 2]
            t = time.perf_counter()
            if nft is not None:
                nft.sync_spis({0x2000_0001: marks[i % 2]})
                applier.routes.sync_clients({"10.99.0.1": lab.addr[node]})
            else:
                by_command._spis = None
                by_command.sync_spis({0x2000_0001: marks[i % 2]})
                sh("ip", "-n", r, "route", "replace", "10.99.0.1/32", "via", lab.addr[node],
                   "proto", "149")
            times.append(time.perf_counter() - t)
        rows.append(row(f"one client flip (SPI + /32 route), {label}, median of 50",
                        round(percentile([x * 1000 for x in times], 50), 2), "ms"))
    applier.routes.sync_clients({})
    return rows


def bench_planner() -> list[Row]:
    nodes = [NodeView(f"node-{i}", 100.0) for i in range(4)]
    keys = [f"{i:032x}" for i in range(100_000)]
    placed = {k: Placement(k, str(choose(k, nodes)), 1) for k in keys}
    p = Planner(50, 1.0)
    p.plan(nodes, placed, (), 0.0)
    t = time.perf_counter()
    p.plan(nodes, placed, (), 1.0)
    steady = time.perf_counter() - t
    dead = [NodeView(n.id, n.weight, alive=n.id != "node-0") for n in nodes]
    t = time.perf_counter()
    acts = p.plan(dead, placed, (), 2.0)
    fail = time.perf_counter() - t
    return [row("planner: steady tick over 100k clients", round(steady * 1000, 1), "ms"),
            row(f"planner: fail-over plan, 100k clients, {len(acts)} moves",
                round(fail * 1000), "ms")]


# -- the daemon on a real etcd -----------------------------------------------------------------

class Cluster:
    def __init__(self, lab: Netlab, store: Store, auto_rebalance: bool = True) -> None:
        self.lab, self.store = lab, store
        self.responders: dict[str, HealthResponder] = {}
        self.members: dict[str, Membership] = {}
        self.stop = threading.Event()
        settings = SprayerSettings(id="bench", vip=VIP, keyd=[KEYD], netns=lab.ns("router"),
                                   handoff_timeout_ms=1000, rebalance_moves_per_s=1000,
                                   auto_rebalance=auto_rebalance)
        applier = KernelApplier(VIP, [KEYD], netns=lab.ns("router"))
        with inside_netns(lab.ns("router")):
            self.sprayer = Sprayer(settings, store, applier)
        self.sprayer.health = HealthTracker(misses=3, hold_down_s=0.2, max_hold_down_s=0.2)
        self.applier = applier

    def node_record(self, n: str, state: str = "ready") -> NodeRecord:
        return NodeRecord(n, self.lab.addr[n], 100, state, 4501,  # type: ignore[arg-type]
                          "bench", time.time())

    def start(self) -> None:
        for n in NODES:
            m = Membership(self.store, self.node_record(n), 3, lambda ev: None)
            m.start()
            self.members[n] = m
            self.answer(n)
        self.sprayer.start()
        self.thread = threading.Thread(target=self.sprayer.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def answer(self, n: str) -> None:
        r = HealthResponder(self.lab.udp(n, self.lab.addr[n], 4501), n)
        r.start()
        self.responders[n] = r

    def silence(self, n: str) -> float:
        r = self.responders.pop(n)
        r.sock.close()      # no answer from now on
        t0 = time.monotonic()
        r.stop()
        return t0

    def kernel_map(self) -> dict[int, int]:
        try:
            return self.applier.nft.read_spis()
        except DriverError:     # table not installed yet
            return {}

    def owners(self) -> dict[str, str]:
        return {k: a.node for k, (a, _) in self.sprayer.view.assigns.items()}

    def settled(self) -> bool:
        v = self.sprayer.view
        return v.ready and not v.in_handoff and not self.sprayer.planner.backlog \
            and all(rev >= 0 for _, rev in v.assigns.values())

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sprayer.stop()
        for r in self.responders.values():
            r.stop()
            r.sock.close()
        for m in self.members.values():
            m.stop(revoke=True)
        self.applier.remove()


def bench_move_10k(lab: Netlab, store: Store) -> list[Row]:
    """10k clients all owned by node-1 (seeded in assign/, automatic rebalance off so they
    stay there), then node-1 dies."""
    clients = [child(i) for i in range(MOVE_CLIENTS)]
    store.put_many(clients)
    store.put_many(Assignment(x.ike_sa_id, "node-1", 1, "active", None, time.time())
                   for x in clients)
    c = Cluster(lab, store, auto_rebalance=False)
    c.start()
    try:
        wait(lambda: len(c.owners()) == MOVE_CLIENTS and c.settled(), 300, "10k loaded")
        wait(lambda: len(c.kernel_map()) == MOVE_CLIENTS, 60, "10k in the map")
        victim = "node-1"
        theirs = set(c.owners())
        victim_mark = c.applier.marks.mark(victim)
        t0 = c.silence(victim)
        # the view holds a write once etcd has committed it
        wait(lambda: victim not in set(c.owners().values()), 300, "moved in etcd")
        t_etcd = time.monotonic() - t0
        wait(lambda: victim_mark not in set(c.kernel_map().values()), 120,
             "moved in the map")
        t_map = time.monotonic() - t0
    finally:
        c.close()
    return [
        row(f"{len(theirs):,} clients off a dead node: all re-assigned in etcd",
            round(t_etcd, 2), "s", "from the node's silence; includes 3 missed probes"),
        row(f"{len(theirs):,} clients off a dead node: kernel map steering none to it",
            round(t_map, 2), "s"),
    ]


class Timeline:
    """Arrival times of ESP datagrams at each node (receiver sockets in their namespaces)."""

    def __init__(self, lab: Netlab) -> None:
        self.socks = {lab.udp(n, VIP, 4500): n for n in NODES}
        self.arrivals: list[tuple[float, str]] = []
        self.stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self.stop.is_set():
            ready, _, _ = select.select(list(self.socks), [], [], 0.1)
            now = time.monotonic()
            for s in ready:
                s.recv(2048)
                self.arrivals.append((now, self.socks[s]))

    def close(self) -> None:
        self.stop.set()
        time.sleep(0.2)
        for s in self.socks:
            s.close()


@contextmanager
def sending(lab: Netlab, spi: int, period_s: float = 0.002) -> Iterator[None]:
    s = lab.udp("sender", "0.0.0.0", 0)
    stop = threading.Event()

    def run() -> None:
        seq = 0
        while not stop.is_set():
            seq += 1
            s.sendto(struct.pack("!II", spi, seq) + b"e" * 64, (VIP, 4500))
            time.sleep(period_s)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(2)
        s.close()


class OldOwner:
    """Stands in for cluster-node's hand-off duty: on a hand-off away from a node, write
    that node's exact final counters (compare-and-swap on the epoch is the node's job)."""

    def __init__(self, store: Store, spis: dict[str, int]) -> None:
        self.store, self.spis = store, spis
        self.watcher = store.watch(Assignment, self.on_event)

    def on_event(self, ev: Any) -> None:
        if isinstance(ev, RecordPut) and isinstance(ev.record, Assignment):
            a = ev.record
            if a.phase == "handoff" and a.previous_node and a.ike_sa_id in self.spis:
                self.store.put(SeqRecord(self.spis[a.ike_sa_id], a.previous_node, a.epoch,
                                         1000, 999, 0, "final", time.time()))


def first_elsewhere(timeline: Timeline, owner: str, t0: float) -> float | None:
    times = [t for t, n in timeline.arrivals[-200:] if t > t0 and n != owner]
    return min(times) if times else None


def unplanned_gap(lab: Netlab, c: Cluster, timeline: Timeline, spi: int, k: str) -> float:
    """The owner of client k stops answering probes; time until its ESP reaches another."""
    wait(c.settled, 60, "settled")
    owner = c.owners()[k]
    with sending(lab, spi):
        time.sleep(0.1)
        t0 = c.silence(owner)
        wait(lambda: first_elsewhere(timeline, owner, t0) is not None, 30, "new owner")
        gap = (first_elsewhere(timeline, owner, t0) or t0) - t0
    c.answer(owner)
    wait(lambda: c.sprayer.health.alive(owner) and c.settled(), 60, "node back")
    return gap


def handoff_gap(lab: Netlab, c: Cluster, timeline: Timeline, spi: int, k: str) -> float:
    """Drain the owner of client k; gap between its last datagram there and the first at the
    new owner."""
    wait(lambda: c.owners().get(k) is not None and c.settled(), 60, "settled")
    owner = c.owners()[k]
    with sending(lab, spi):
        time.sleep(0.1)
        t0 = time.monotonic()
        c.members[owner].update(c.node_record(owner, "draining"))
        wait(lambda: first_elsewhere(timeline, owner, t0) is not None, 30, "after hand-off")
        first = first_elsewhere(timeline, owner, t0) or t0
        last_old = max(t for t, n in timeline.arrivals if t < first and n == owner)
    c.members[owner].update(c.node_record(owner, "ready"))
    return first - last_old


def bench_gaps(lab: Netlab, store: Store) -> list[Row]:
    clients = [child(50_000 + i) for i in range(60)]
    store.put_many(clients)
    spis = {c.ike_sa_id: c.spi_in for c in clients}
    c = Cluster(lab, store)
    c.start()
    timeline = Timeline(lab)
    old_owner = OldOwner(store.clone(), spis)
    unplanned: list[float] = []
    handoff: list[float] = []
    try:
        wait(lambda: len(c.owners()) == len(clients) and c.settled(), 60, "assigned")
        for run in range(RUNS):
            k = sorted(spis)[run % len(spis)]
            unplanned.append(unplanned_gap(lab, c, timeline, spis[k], k))
            handoff.append(handoff_gap(lab, c, timeline, spis[k], k))
    finally:
        timeline.close()
        old_owner.watcher.stop()
        c.close()
    ms = [x * 1000 for x in unplanned]
    hs = [x * 1000 for x in handoff]
    return [
        {**row(f"unplanned gap, steering part (median of {len(ms)})",
               round(percentile(ms, 50)), "ms",
               "3 missed probes at 100 ms + CAS write + watch + map"),
         "baseline": 2100, "baseline_name": "strongSwan HA heartbeat_timeout",
         "goal": "≤ 500 ms with the node's take-over"},
        row(f"unplanned gap, steering part (p99 of {len(ms)})", round(percentile(ms, 99)),
            "ms"),
        {**row(f"hand-off gap, steering part (median of {len(hs)})",
               round(percentile(hs, 50), 1), "ms", "exact counters; ESP every 2 ms"),
         "baseline": 800, "baseline_name": "Cisco ASA unit failover, minimum (15 s default)"},
        row(f"hand-off gap, steering part (p99 of {len(hs)})", round(percentile(hs, 99), 1),
            "ms"),
    ]


def bench_userspace(lab: Netlab) -> list[Row]:
    """The slow path: share of ESP-in-UDP datagrams the Python forwarder delivers at a given
    offered rate, against the kernel (nftables) path with the same sender."""
    r = lab.ns("router")
    rx = lab.udp("node-1", VIP, 4500)
    rx.settimeout(0.5)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    targets = Targets(nodes=dict(lab.addr), fallback=list(NODES), spis={0x3000_0001: "node-1"},
                      clients={})
    rows = []
    for label in ("nftables (kernel)", "userspace forwarder"):
        applier: Any
        if label.startswith("nft"):
            applier = KernelApplier(VIP, [KEYD], netns=r)
        else:
            sh("ip", "-n", r, "addr", "add", f"{VIP}/32", "dev", "lo")
            applier = UserspaceApplier(VIP, [KEYD], netns=r)
        try:
            applier.apply(targets)
            for rate in (5_000, 20_000, 80_000):
                sent, got, took = _blast(lab, rx, rate, 1.0)
                rows.append(row(f"ESP-in-UDP offered at {rate:,}/s, {label}: delivered",
                                round(100 * got / sent, 1), "%",
                                f"achieved offer {sent / took:,.0f}/s; sender and receiver "
                                "are Python threads of this process"))
        finally:
            applier.close()
            if isinstance(applier, KernelApplier):
                applier.remove()
            else:
                applier.routes.remove()
                sh("ip", "-n", r, "addr", "del", f"{VIP}/32", "dev", "lo")
    rx.close()
    return rows


def _blast(lab: Netlab, rx: socket.socket, rate: int,
           seconds: float) -> tuple[int, int, float]:
    """Offer `rate` datagrams/s for `seconds` (paced in bursts of 100) while a thread counts
    arrivals; return (sent, arrived, seconds the sending took)."""
    arrivals = 0
    done = threading.Event()

    def count() -> None:
        nonlocal arrivals
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                rx.recv(2048)
                arrivals += 1
    counter = threading.Thread(target=count, daemon=True)
    counter.start()
    tx = lab.udp("sender", "0.0.0.0", 0)
    pkt = struct.pack("!II", 0x3000_0001, 1) + b"p" * 100
    sent = 0
    t0 = time.monotonic()
    while sent < rate * seconds:
        for _ in range(100):
            tx.sendto(pkt, (VIP, 4500))
        sent += 100
        ahead = t0 + sent / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    took = time.monotonic() - t0
    tx.close()
    time.sleep(0.5)
    done.set()
    counter.join(2)
    return sent, arrivals, took


def run() -> list[Row]:
    if os.geteuid() != 0:
        raise SystemExit("bench failover needs root (network namespaces, nftables)")
    lab = Netlab()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-failover-") as d:
        server = EtcdServer(Path(d), name="bench")
        try:
            lab.up()
            server.start()
            rows += bench_map(lab)
            rows += bench_planner()
            rows += bench_userspace(lab)
            for part in (bench_move_10k, bench_gaps):
                store = Store([server.endpoint], Keyspace("bf" + uuid.uuid4().hex[:8]),
                              DataKey(os.urandom(32), "bench"), timeout_s=30.0)
                try:
                    rows += part(lab, store)
                finally:
                    store.close()
        finally:
            server.stop()
            lab.down()
    rows += run_lab(lambda m: print(f"bench failover: {m}", file=sys.stderr, flush=True))
    return rows


if __name__ == "__main__":
    for r in run():
        print(r)
