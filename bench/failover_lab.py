"""bench failover, whole path: a lab (cluster/lab) with real keyd, cluster-node and sprayer.

Clients are the project's IKE initiator (bench/esp_client.py): each establishes through the
VIP via keyd, then pings the protected server in userspace ESP every PERIOD_S and decrypts
the replies. Per run, gap = the longest silence in replies of the clients of the node that
loses them:

- unplanned: a node carrying clients is SIGKILLed (the one killed longest ago; restarted
  after the run);
- hand-off: `clusterctl node drain` on the node owning most clients (undrained after).

Each run starts from a steady cluster: the sprayer holds all NODES nodes alive (its damping
holds a restarted node down for 1 s, doubled for each further flap within 120 s: killing the
same few nodes every few seconds would otherwise leave clients nowhere to go), every client
steered and answered.

Then MASS_CLIENTS more clients (handshakes only, within MASS_BUDGET_S, from MASS_GENERATORS
processes) are made while the other nodes are drained, so all land on node-1; once the
generators have exited and node-1 sends for all of them, the others are undrained and node-1
is SIGKILLed: time until etcd
assigns none of them to it and the router's SPI map steers none to it. The sprayer's counters
over the move, and CASCADE_WATCH_S after it, must show exactly one failover move per client
and one node fewer alive: a survivor declared down while it takes over thousands of clients
would move them again (a cascade; the lab's logs are then kept).

The sprayer runs with the lab's settings (probe every 100 ms, down after 3 misses) except
auto_rebalance = false, so a restarted or undrained node does not pull clients back between
runs (each run then moves exactly the clients its event concerns).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from cryptography import x509

from bench import Row, percentile, row, wait
from bench.esp_client import EspClient, Pinger, longest_silence
from cluster.host import inside_netns
from cluster.lab import addresses as A
from cluster.lab.bench import (
    address_range,
    assignments,
    lab_store,
    set_node_state,
    sprayer_settings,
)
from cluster.lab.demo import owners
from cluster.lab.lab import Lab
from cluster.store import Assignment, RecordDeleted, RecordPut
from sprayer.nft import NftDriver

ROOT = Path(__file__).resolve().parent.parent
RUNS = 20
NODES = 5
CLIENTS = 6
PERIOD_S = 0.005
RESUME_TIMEOUT_S = 20.0
MASS_CLIENTS = 10_000
MASS_BUDGET_S = 300.0
MASS_NETWORK = "10.40.0.0/18"
MASS_GENERATORS = 3
CASCADE_WATCH_S = 5.0
STRONGSWAN_HA_S = 2.1
CISCO_MIN_S, CISCO_DEFAULT_S = 0.8, 15.0


class Bench:
    def __init__(self, lab: Lab, progress: Callable[[str], None]) -> None:
        self.lab = lab
        self.progress = progress
        self.clients: list[EspClient] = []
        self.pinger: Pinger | None = None
        self.stuck_runs: list[str] = []
        self.killed_at: dict[str, float] = {}

    # -- clients --------------------------------------------------------------------------
    def connect_clients(self) -> None:
        cas = tuple(x509.load_pem_x509_certificates(self.lab.pki.ca_cert.read_bytes()))
        psk = self.lab.pki.psk().encode()
        for i in range(1, CLIENTS + 1):
            rec = self.lab.add_client(f"esp{i}", ike=False)
            with inside_netns(rec.netns):
                self.clients.append(EspClient.connect(f"esp{i}", rec.address, A.VIP, psk,
                                                      A.GATEWAY_ID, cas))
        self.pinger = Pinger(self.clients, A.SERVER_IP, A.VIP, PERIOD_S)
        self.pinger.start()
        wait(self.all_answering, 30, "every client's pings answered")

    def all_answering(self, within_s: float = 0.2) -> bool:
        if self.pinger is not None and self.pinger.error is not None:
            raise RuntimeError(f"pinger: {self.pinger.error}")
        now = time.monotonic()
        return all(c.replies and now - c.replies[-1] < within_s for c in self.clients)

    def owner_of(self) -> dict[str, str]:
        """client name → node (the router's /32 for its virtual IP)."""
        route = owners(self.lab)
        return {c.name: route.get(c.virtual_ip, "?") for c in self.clients}

    def busiest(self) -> tuple[str, list[EspClient]]:
        own = self.owner_of()
        counts = Counter(n for n in own.values() if n != "?")
        node = max(sorted(counts), key=lambda n: counts[n])
        return node, [c for c in self.clients if own[c.name] == node]

    def settle(self) -> None:
        """Every node alive in the sprayer's eyes (a restarted node is held down for a while,
        longer after each flap), every client steered and answered."""
        wait(lambda: sprayer_metrics(self.lab).get("sprayer_nodes_alive") == NODES, 120,
             f"the sprayer to hold all {NODES} nodes alive", 0.3)
        wait(lambda: self.all_answering() and "?" not in self.owner_of().values(), 30,
             "every client answered and steered")
        time.sleep(0.3)

    def least_recently_killed(self) -> tuple[str, list[EspClient]]:
        """Among the nodes carrying clients, the one killed longest ago (never: first)."""
        own = self.owner_of()
        carrying = sorted({n for n in own.values() if n != "?"})
        node = min(carrying, key=lambda n: (self.killed_at.get(n, 0.0),
                                            -sum(1 for x in own.values() if x == n)))
        return node, [c for c in self.clients if own[c.name] == node]

    def gap(self, moved: list[EspClient], t0: float) -> tuple[float, int]:
        """Wait until each moved client has answers again; (the longest silence, clients
        that never resumed)."""
        def resumed(c: EspClient) -> bool:
            return sum(1 for t in c.replies[-20:] if t > t0) >= 10
        with contextlib.suppress(TimeoutError):
            wait(lambda: all(resumed(c) for c in moved), RESUME_TIMEOUT_S, "pings resumed")
        end = time.monotonic()
        gaps, stuck = [], 0
        for c in moved:
            before = [t for t in c.replies if t <= t0]
            since = before[-1] if before else t0
            gaps.append(longest_silence(c.replies, since, end))
            stuck += not resumed(c)
        return max(gaps), stuck

    # -- runs -----------------------------------------------------------------------------
    def unplanned(self) -> tuple[float, int, int]:
        self.settle()
        node, moved = self.least_recently_killed()
        t0 = time.monotonic()
        self.killed_at[node] = t0
        self.lab.kill(node, signal.SIGKILL)
        gap, stuck = self.gap(moved, t0)
        self.note("unplanned", node, moved, gap, stuck)
        self.lab.start(node)
        wait(lambda: (self.lab.etcd_json(f"nodes/{node}") or {}).get("state") == "ready",
             30, f"{node} ready again", 0.2)
        return gap, stuck, len(moved)

    def handoff(self) -> tuple[float, int, int]:
        self.settle()
        node, moved = self.busiest()
        t0 = time.monotonic()
        set_node_state(self.lab, node, drain=True)
        wait(lambda: node not in self.owner_of().values(), 30, f"{node} emptied")
        gap, stuck = self.gap(moved, t0)
        self.note("hand-off", node, moved, gap, stuck)
        set_node_state(self.lab, node, drain=False)
        return gap, stuck, len(moved)

    def note(self, kind: str, node: str, moved: list[EspClient], gap: float,
             stuck: int) -> None:
        after = self.owner_of()
        where = ", ".join(f"{c.name}→{after[c.name]}" for c in moved)
        line = f"{kind} run, {node}: gap {gap * 1000:.0f} ms ({where})"
        if stuck:
            line += f"; {stuck} client(s) not answered again within {RESUME_TIMEOUT_S:g}s"
            self.stuck_runs.append(f"{time.strftime('%H:%M:%S')} {line}")
        self.progress(line)

    def close(self) -> None:
        if self.pinger is not None:
            self.pinger.stop()
            self.pinger = None
        for c in self.clients:
            c.close()

    def client_drops(self) -> int:
        return sum(c.bad + sum(c.sa.drops.values()) for c in self.clients)


def gap_rows(b: Bench) -> list[Row]:
    unplanned: list[float] = []
    handoff: list[float] = []
    stuck = moved_u = moved_h = 0
    for _ in range(RUNS):
        g, s, n = b.unplanned()
        unplanned.append(g * 1000)
        stuck += s
        moved_u += n
    for _ in range(RUNS):
        g, s, n = b.handoff()
        handoff.append(g * 1000)
        stuck += s
        moved_h += n
    u50, u99 = percentile(unplanned, 50), percentile(unplanned, 99)
    h50, h99 = percentile(handoff, 50), percentile(handoff, 99)
    how = (f"{CLIENTS} project-initiator clients, ICMP echo in userspace ESP every "
           f"{PERIOD_S * 1000:g} ms; gap = longest silence in decrypted replies, worst client "
           "of the run")
    return [
        {**row(f"unplanned gap, whole path: SIGKILL of the owner node (median of {RUNS})",
               round(u50), "ms", f"{how}; {moved_u} client moves in all; probe 100 ms x 3 "
               "misses, then the new owner's checkpoint + jump"),
         "baseline": STRONGSWAN_HA_S * 1000, "baseline_name": "strongSwan HA heartbeat_timeout",
         "ratio": round(u50 / (STRONGSWAN_HA_S * 1000), 2), "goal": "≤ 500 ms"},
        {**row(f"unplanned gap, whole path (p99 of {RUNS})", round(u99), "ms",
               f"max {max(unplanned):.0f} ms"),
         "baseline": CISCO_MIN_S * 1000, "baseline_name": "Cisco ASA unit failover, minimum",
         "ratio": round(u99 / (CISCO_MIN_S * 1000), 2)},
        {**row(f"hand-off gap, whole path: clusterctl node drain (median of {RUNS})",
               round(h50, 1), "ms", f"{how}; {moved_h} client moves in all, exact counters"),
         "baseline": CISCO_MIN_S * 1000, "baseline_name": "Cisco ASA unit failover, minimum",
         "ratio": round(h50 / (CISCO_MIN_S * 1000), 3), "goal": "≤ 1 lost ping"},
        {**row(f"hand-off gap, whole path (p99 of {RUNS})", round(h99, 1), "ms",
               f"max {max(handoff):.1f} ms; clients that never resumed in any run: {stuck}; "
               f"ESP datagrams the clients dropped: {b.client_drops()}"),
         "baseline": CISCO_DEFAULT_S * 1000, "baseline_name": "Cisco ASA unit failover, default",
         "ratio": round(h99 / (CISCO_DEFAULT_S * 1000), 4)},
    ]


# -- many clients off a dead node -------------------------------------------------------------

def make_mass(lab: Lab) -> tuple[int, int, float]:
    """MASS_CLIENTS handshakes from MASS_GENERATORS processes in the mass namespace; returns
    (established, failed, wall seconds)."""
    rec = address_range(lab, "mass", MASS_NETWORK)
    first = int.from_bytes(bytes(int(x) for x in MASS_NETWORK.split("/")[0].split(".")))
    procs = []
    t0 = time.monotonic()
    start = first + 1
    for g in range(MASS_GENERATORS):
        count = MASS_CLIENTS // MASS_GENERATORS + (g < MASS_CLIENTS % MASS_GENERATORS)
        addr = ".".join(str(start >> s & 255) for s in (24, 16, 8, 0))
        start += count
        procs.append(subprocess.Popen(
            ["ip", "netns", "exec", rec.netns, sys.executable, "-m", "bench.esp_client",
             "initiate", "--first", addr, "--count", str(count), "--target", A.VIP,
             "--psk-file", str(lab.pki.psk_file), "--gateway-id", A.GATEWAY_ID,
             "--ca", str(lab.pki.ca_cert), "--budget-s", str(MASS_BUDGET_S)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT))
    ok = failed = 0
    for p in procs:
        out, err = p.communicate(timeout=MASS_BUDGET_S + 120)
        if p.returncode != 0:
            raise RuntimeError(f"client generator failed: {err.strip()[-400:]}")
        done = json.loads(out.strip().splitlines()[-1])
        ok += done["ok"]
        failed += done["failed"]
    return ok, failed, time.monotonic() - t0


def scrape(lab: Lab, role: str, port: int, names: tuple[str, ...]) -> dict[str, float]:
    """Samples whose name starts with one of `names` from a lab daemon's metrics endpoint (on
    loopback in its namespace: this thread enters it for the connection)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        with inside_netns(lab.ns(role)):
            conn.connect()
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(names):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def sprayer_metrics(lab: Lab) -> dict[str, float]:
    """The sprayer's counters."""
    return scrape(lab, "router", 9412, (
        "sprayer_write_conflicts_total", "sprayer_moves_total", "sprayer_etcd_errors_total",
        "sprayer_nodes_alive", "sprayer_probe_rounds_late_total"))


def sas_owned(lab: Lab, node: str) -> float:
    """Child SAs the node sends on: its take-overs done."""
    name = "ipsec_cluster_node_sas_owned"
    return scrape(lab, node, 9411, (name,)).get(name, 0.0)


class AssignWatch:
    """assign/ as etcd holds it, kept current by a watch."""

    def __init__(self, lab: Lab) -> None:
        self.store = lab_store(lab)
        self.lock = threading.Lock()
        self.nodes = assignments(self.store)
        self.watcher = self.store.watch(Assignment, self.on_event)

    def on_event(self, ev: object) -> None:
        with self.lock:
            if isinstance(ev, RecordPut) and isinstance(ev.record, Assignment):
                self.nodes[ev.record.ike_sa_id] = ev.record.node
            elif isinstance(ev, RecordDeleted):
                self.nodes.pop(ev.name, None)

    def count(self, node: str) -> int:
        with self.lock:
            return sum(1 for n in self.nodes.values() if n == node)

    def close(self) -> None:
        self.watcher.stop()
        self.store.close()


def mass_rows(lab: Lab, b: Bench) -> list[Row]:
    b.close()               # the pingers stop: this part measures the control plane
    victim, others = "node-1", tuple(f"node-{i}" for i in range(2, NODES + 1))
    for n in others:
        set_node_state(lab, n, drain=True)
    ok, failed, took = make_mass(lab)
    watch = AssignWatch(lab)
    nft = NftDriver(A.VIP, netns=lab.ns("router"))
    try:
        total = len(b.clients) + ok
        wait(lambda: watch.count(victim) >= total, 120, f"{total} clients on {victim}", 0.2)
        wait(lambda: len(nft.read_spis()) >= total, 120, f"{total} SPIs in the map", 0.2)
        # node-1 takes over each new client after its handshake and lags behind: the kill
        # comes once it sends for all of them, not while survivors and it still compete
        wait(lambda: sas_owned(lab, victim) >= total, 300, f"{victim} sending for {total}", 0.5)
        marks = Counter(nft.read_spis().values())
        victim_mark = marks.most_common(1)[0][0]
        for n in others:
            set_node_state(lab, n, drain=False)
        wait(lambda: sprayer_metrics(lab).get("sprayer_nodes_alive") == NODES, 120,
             f"the sprayer to hold all {NODES} nodes alive", 0.3)
        time.sleep(1.0)
        on_victim = watch.count(victim)
        before = sprayer_metrics(lab)
        b.progress(f"SIGKILL {victim}, which carries {on_victim} clients")
        t0 = time.monotonic()
        lab.kill(victim, signal.SIGKILL)
        wait(lambda: watch.count(victim) < on_victim, 300, "a first re-assignment", 0.01)
        t_first = time.monotonic() - t0
        wait(lambda: watch.count(victim) == 0, 300, "re-assigned in etcd", 0.02)
        t_etcd = time.monotonic() - t0
        b.progress(f"all re-assigned after {t_etcd:.2f} s (the first after {t_first:.2f} s)")
        wait(lambda: victim_mark not in set(nft.read_spis().values()), 300,
             "out of the SPI map", 0.02)
        t_map = time.monotonic() - t0
        time.sleep(CASCADE_WATCH_S)     # a node wrongly declared down would move clients now
        after = sprayer_metrics(lab)
    finally:
        watch.close()
    delta = {k.removeprefix("sprayer_"): v - before.get(k, 0.0) for k, v in after.items()
             if v != before.get(k, 0.0)}
    failovers = delta.get('moves_total{kind="Failover"}', 0.0)
    if failovers != on_victim or delta.get("nodes_alive", 0.0) != -1:
        line = (f"cascade: {failovers:g} failover moves for {on_victim} clients, nodes alive "
                f"{delta.get('nodes_alive', 0.0):+g}")
        b.progress(line)
        b.stuck_runs.append(line)       # the lab's logs are kept
    note = (f"clients made by the project's initiator through keyd: {ok:,} handshakes "
            f"({failed} failed) in {took:.0f} s wall, {MASS_GENERATORS} generator processes"
            + (f" (the {MASS_BUDGET_S:g} s budget stopped them short of {MASS_CLIENTS:,})"
               if ok + failed < MASS_CLIENTS else ""))
    return [
        {**row(f"{on_victim:,} clients off a SIGKILLed node, whole lab: all re-assigned in etcd",
               round(t_etcd, 2), "s", f"from the SIGKILL (the first re-assigned after "
               f"{t_first:.2f} s); {note}"),
         "baseline": CISCO_DEFAULT_S, "baseline_name": "Cisco ASA unit failover, default",
         "ratio": round(t_etcd / CISCO_DEFAULT_S, 2)},
        row(f"{on_victim:,} clients off a SIGKILLed node, whole lab: SPI map steering none "
            "to it", round(t_map, 2), "s", "read back from the router's kernel; the "
            f"sprayer's counters from the kill to {CASCADE_WATCH_S:g} s after the move: "
            + ", ".join(f"{k} {v:+g}" for k, v in sorted(delta.items()))),
    ]


def run_lab(progress: Callable[[str], None] = lambda _: None,
            keep_logs: bool = False) -> list[Row]:
    """The whole-path rows. The lab's logs are kept (under the system's temporary directory,
    the path said through `progress`) when something failed or a client never answered
    again, or always with keep_logs."""
    name = f"bf{secrets.token_hex(3)}"
    progress(f"lab {name}: starting ({NODES} nodes, 1 keyd)")
    lab = Lab.up(name, nodes=NODES, keyd=1,
                 save_logs_to=Path(tempfile.gettempdir()) / f"bench-failover-{name}")
    b = Bench(lab, progress)
    failed = True
    try:
        sprayer_settings(lab, auto_rebalance=False)
        progress("connecting the ESP clients")
        b.connect_clients()
        progress("gap runs")
        rows = gap_rows(b)
        progress("many clients off a dead node")
        rows += mass_rows(lab, b)
        failed = False
        return rows
    finally:
        try:
            b.close()
        finally:
            logs = None
            if keep_logs or failed or b.stuck_runs:
                logs = Path(tempfile.gettempdir()) / f"bench-failover-{name}"
                progress(f"lab logs kept in {logs}")
            lab.down(logs)
