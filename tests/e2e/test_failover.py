"""The sprayer's acceptance scenarios with real strongSwan clients (issue 5, "Done when").

One lab for the module: 3 nodes, one keyd, the sprayer and a standby sprayer, four strongSwan
clients pinging the protected server every 10 ms for the whole module (`ping -D`, so every
answer has a time stamp and a sequence number). The scenarios run in order on it — a node
killed, a node drained and undrained, a fourth node joining, a node partitioned, the sprayer
leader killed — each starting from whatever state the previous one left, as an operator's
cluster would. Every scenario prints its measurements; time goals are bench/'s business, so
times are asserted only as generous sanity bounds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cluster.lab import addresses as A
from cluster.lab import demo, faults
from cluster.lab import lab as labmod
from cluster.lab.clients import CLIENT_DOMAIN
from cluster.lab.lab import Lab
from cluster.lab.strongswan import IkeSaView
from cluster.plan import NodeView, choose

CLIENTS = ("alice", "bob", "carol", "dave")
PING_INTERVAL = "0.01"
LEASE_TTL_S = 3.0          # lease_ttl_s of the lab's nodes and sprayers (cluster/lab/daemons.py)
CLUSTERCTL = str(Path(sys.executable).parent / "clusterctl")


def _require_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces)")
    for tool in ("ip", "nft", "etcd", "swanctl", "iperf3", "nsenter", "unshare", "curl"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: run `make bootstrap`")


def sa_identity(sa: IkeSaView) -> tuple[object, ...]:
    """What must not change when a client moves: the IKE SA (its unique id counts up on a new
    IKE_SA_INIT), its SPIs (an IKE rekey changes them) and the Child SA SPIs (a Child rekey)."""
    return (sa.uniqueid, sa.spi_i, sa.spi_r, sa.child_spis)


@dataclass
class Cluster:
    """The module's lab, its pinging clients and what they held at the start."""

    lab: Lab
    logs: dict[str, Path] = field(default_factory=dict)
    sas: dict[str, IkeSaView] = field(default_factory=dict)

    def one_sa(self, client: str) -> IkeSaView:
        sas = [sa for sa in self.lab.client_sas(client) if sa.state == "ESTABLISHED"]
        assert len(sas) == 1, f"{client} holds {len(sas)} established IKE SAs"
        return sas[0]

    def assert_sas_kept(self) -> None:
        for c in self.sas:
            now = self.one_sa(c)
            assert sa_identity(now) == sa_identity(self.sas[c]), \
                f"{c} made a new IKE SA or rekeyed: {self.sas[c]} -> {now}"

    def ctl(self, *args: str) -> Any:
        r = subprocess.run([CLUSTERCTL, "--lab", self.lab.name, "-o", "json", *args],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"clusterctl {' '.join(args)}: {r.stderr.strip()}"
        assert "Traceback" not in r.stderr
        return json.loads(r.stdout) if r.stdout.strip() else None

    def clients(self) -> dict[str, dict[str, Any]]:
        """`clusterctl client list` by lab client name."""
        by_identity = {f"{c}.{CLIENT_DOMAIN}": c for c in self.sas}
        return {by_identity[row["identity"]]: row for row in self.ctl("client", "list")
                if row["identity"] in by_identity}

    def owners(self) -> dict[str, str]:
        return {c: row["owner"] for c, row in self.clients().items()}

    def ready_nodes(self) -> list[str]:
        return sorted(n["id"] for n in self.ctl("node", "list") if n["state"] == "ready")

    def settled(self, timeout_s: float = 60.0) -> dict[str, str]:
        """Wait until every client's assignment is active on a live node and nothing is left
        to rebalance; returns the owners."""
        deadline = time.monotonic() + timeout_s
        while True:
            rows = self.clients()
            if len(rows) == len(self.sas) and all(
                    r["phase"] == "active" and r["owner_alive"] for r in rows.values()) \
                    and not self.ctl("rebalance", "--dry-run")["moves"]:
                return {c: r["owner"] for c, r in rows.items()}
            assert time.monotonic() < deadline, f"the cluster did not settle: {rows}"
            time.sleep(0.5)

    def answers(self, client: str) -> list[tuple[float, int]]:
        return demo.replies(self.logs[client])

    def answered_after(self, client: str, t: float) -> bool:
        return any(ts > t for ts, _ in self.answers(client))

    def wait_answers(self, clients: list[str], after: float, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            silent = [c for c in clients if not self.answered_after(c, after)]
            if not silent:
                return
            assert time.monotonic() < deadline, f"no ping answered since the event: {silent}"
            time.sleep(0.1)

    def window(self, client: str, since: float, until: float) -> tuple[float, int]:
        """Longest silence (s) and unanswered pings of `client` in [since, until]."""
        gap, lost = demo.gap_after(self.answers(client), since, until)
        return gap, lost

    def node_metric(self, node: str, name: str) -> dict[str, float]:
        """A node's Prometheus family `ipsec_cluster_node_<name>` (labels → value)."""
        r = self.lab.run(node, ["curl", "-sf", "http://127.0.0.1:9411/metrics"], timeout_s=10)
        assert r.returncode == 0, f"{node}'s metrics: {r.stderr}"
        out = {}
        for line in r.stdout.splitlines():
            if line.startswith(f"ipsec_cluster_node_{name}"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out


def _lab_name() -> str:
    import secrets
    return f"fo-{secrets.token_hex(3)}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    _require_tools()
    name = _lab_name()
    logs = tmp_path_factory.mktemp("failover") / "lab-logs"
    try:
        lab = Lab.up(name, nodes=3, keyd=1, save_logs_to=logs)
        faults.start_standby_sprayer(lab)
        c = Cluster(lab)
        for client in CLIENTS:
            lab.add_client(client)
            c.sas[client] = c.one_sa(client)
        for client in CLIENTS:
            rec = lab.spawn_in(client, f"ping:{client}", [
                "ping", "-D", "-n", "-i", PING_INTERVAL, "-W", "1", A.SERVER_IP])
            c.logs[client] = Path(rec.log)
        c.wait_answers(list(CLIENTS), 0.0)
        c.settled()
        yield c
    finally:
        labmod.down(name, logs)
        print(f"\nlab logs: {logs}")


def busiest(owners: dict[str, str]) -> str:
    counts: dict[str, int] = {}
    for node in owners.values():
        counts[node] = counts.get(node, 0) + 1
    return max(sorted(counts), key=lambda n: counts[n])


def rendezvous(cluster: Cluster, nodes: list[str]) -> dict[str, str]:
    """Where the planner puts each client among `nodes` (all of weight 100 in the lab)."""
    views = [NodeView(id=n, weight=100) for n in nodes]
    return {c: str(choose(row["ike_sa_id"], views)) for c, row in cluster.clients().items()}


def _table(title: str, header: tuple[str, ...], rows: Sequence[tuple[object, ...]]) -> None:
    print(f"\n{title}")
    print("  " + "  ".join(f"{h:>14}" for h in header))
    for row in rows:
        print("  " + "  ".join(f"{v!s:>14}" for v in row))


def test_node_killed_clients_resume_with_the_same_sas(cluster: Cluster) -> None:
    lab = cluster.lab
    before = cluster.settled()
    victim = busiest(before)
    moved = [c for c, n in before.items() if n == victim]
    time.sleep(1.0)
    killed_at = time.time()
    lab.kill(victim, signal.SIGKILL)
    cluster.wait_answers(list(CLIENTS), killed_at + 0.05)
    time.sleep(2.0)
    until = time.time()
    after = cluster.owners()
    rows = []
    for c in CLIENTS:
        gap, lost = cluster.window(c, killed_at, until)
        resumed = min(t for t, _ in cluster.answers(c) if t > killed_at) - killed_at
        rows.append((c, f"{before[c]}->{after[c]}", f"{gap * 1000:.0f} ms", lost,
                     f"{resumed * 1000:.0f} ms"))
    _table(f"{victim} (owner of {len(moved)} of {len(CLIENTS)} clients) killed with SIGKILL",
           ("client", "owner", "longest gap", "lost pings", "first answer"), rows)
    cluster.assert_sas_kept()
    for c in moved:
        assert after[c] != victim, f"{c} still assigned to the dead {victim}"
    for c, _, gap_text, _, _ in rows:
        gap_ms = float(str(gap_text).split()[0])
        assert gap_ms < 10_000, f"{c}: pings stopped for {gap_ms} ms"   # sanity, not the goal
    # the node comes back for the next scenarios (it registers afresh)
    lab.start(victim)
    deadline = time.monotonic() + 30
    while victim not in cluster.ready_nodes():
        assert time.monotonic() < deadline, f"{victim} did not register again"
        time.sleep(0.3)
    cluster.settled()
    cluster.assert_sas_kept()


_ASSIGNMENT = re.compile(r"^(\S+)Z info sprayer assignment ike_sa=(\w+) .*action=(Start|Complete)"
                         r"Handoff", re.M)


def handoff_ms(cluster: Cluster, since: float) -> list[float]:
    """Each hand-off the sprayer logged after `since`: from writing phase=handoff to writing
    phase=active (the old owner's final counters arrived in between)."""
    text = Path(cluster.lab.state.processes["sprayer"].log).read_text(errors="replace")
    started: dict[str, float] = {}
    out = []
    for stamp, ike_sa, what in _ASSIGNMENT.findall(text):
        t = datetime.fromisoformat(stamp).replace(tzinfo=UTC).timestamp()
        if t < since:
            continue
        if what == "Start":
            started[ike_sa] = t
        elif ike_sa in started:
            out.append((t - started.pop(ike_sa)) * 1000)
    return out


#: kernel counters (nstat) that show where a packet died on its way through a namespace: a
#: forwarding loop ends in IcmpOutTimeExcds, a missing route in IpOutNoRoutes
KERNEL_LOSS = ("IcmpOutTimeExcds", "IpOutNoRoutes", "IpExtInNoRoutes", "IcmpOutDestUnreachs",
               "IpInDiscards", "IpOutDiscards", "IpInAddrErrors")


def loss_counters(cluster: Cluster, members: Sequence[str]) -> dict[str, float]:
    """Where packets can be lost, as counters: each node's data-path drops by reason and the
    kernel's loss counters of each member's namespace (`member:counter` -> value)."""
    out: dict[str, float] = {}
    for m in members:
        if m.startswith("node-"):
            for key, value in cluster.node_metric(m, "drops_total").items():
                reason = key.split('reason="')[1].rstrip('"}')
                out[f"{m}:{reason}"] = value
        r = cluster.lab.run(m, ["nstat", "-saz", *KERNEL_LOSS], timeout_s=10)
        for line in r.stdout.splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[0] in KERNEL_LOSS:
                out[f"{m}:{fields[0]}"] = float(fields[1])
    return out


def counted_losses(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    return {k: int(v - before.get(k, 0)) for k, v in sorted(after.items())
            if v - before.get(k, 0) > 0}


def test_drain_moves_clients_with_exact_counters_and_undrain_spreads_back(
        cluster: Cluster) -> None:
    before = cluster.settled()
    node = busiest(before)
    moving = sorted(c for c, n in before.items() if n == node)
    exact_before = {n: cluster.node_metric(n, "takeovers_total") for n in cluster.ready_nodes()}
    members = [*cluster.ready_nodes(), "router", "server", *CLIENTS]
    loss_before = loss_counters(cluster, members)
    started = time.time()
    assert cluster.ctl("node", "drain", node)["state"] == "draining"
    drained = time.time()
    written = [m for m in cluster.ctl("rebalance")["moves"] if m["result"] == "written"]
    rebalanced = time.time()
    deadline = time.monotonic() + 60
    while True:
        rows = cluster.clients()
        if all(r["owner"] != node and r["phase"] == "active" for r in rows.values()):
            break
        assert time.monotonic() < deadline, f"{node} still owns clients: {rows}"
        time.sleep(0.2)
    done = time.time()
    time.sleep(1.5)
    after = cluster.owners()
    rows_out = []
    losses = {}
    for c in CLIENTS:
        gap, lost = cluster.window(c, started, time.time())
        losses[c] = lost
        if lost:
            answered = cluster.answers(c)
            seqs = {q for _, q in answered}
            inside = [(t, q) for t, q in answered if t >= started]
            missing = [q for q in range(inside[0][1], inside[-1][1]) if q not in seqs]
            near = {q: max((t for t, s in answered if s < q), default=0.0) for q in missing}
            print(f"  {c} unanswered icmp_seq: " + ", ".join(
                f"{q} (after the answer at {datetime.fromtimestamp(t, UTC):%H:%M:%S.%f})"
                for q, t in near.items()))
        rows_out.append((c, f"{before[c]}->{after[c]}", f"{gap * 1000:.0f} ms", lost))
    _table(f"clusterctl node drain {node} ({len(moving)} client(s)): drain command "
           f"{(drained - started) * 1000:.0f} ms, rebalance command {len(written)} move(s) in "
           f"{(rebalanced - drained) * 1000:.0f} ms, all moved (seen by clusterctl) after "
           f"{(done - started) * 1000:.0f} ms", ("client", "owner", "longest gap", "lost pings"),
           rows_out)
    counted = counted_losses(loss_before, loss_counters(cluster, members))
    print(f"  loss counters during the drain: {counted}")
    assert next(n for n in cluster.ctl("node", "list") if n["id"] == node)["clients"] == 0
    # the hand-offs took the old owner's exact counters (final seq records), not the jump
    exact = 0
    for n in cluster.ready_nodes():
        now = cluster.node_metric(n, "takeovers_total")
        exact += int(now.get('ipsec_cluster_node_takeovers_total{how="exact"}', 0)
                     - exact_before.get(n, {}).get(
                         'ipsec_cluster_node_takeovers_total{how="exact"}', 0))
    child_sas = sum(len(cluster.sas[c].child_spis) for c in moving)
    print(f"  exact take-overs: {exact} of {child_sas} Child SA(s) moved; hand-offs in the "
          f"sprayer's log (start → complete): "
          f"{', '.join(f'{ms:.0f} ms' for ms in handoff_ms(cluster, since=started))}")
    assert exact >= child_sas
    for c in moving:
        # A correctness property of the hand-off, not a timing goal: the old owner holds the
        # client's return traffic and forwards it, the new owner holds it until it sends, and
        # the final record (on which the router flips) waits for the new owner's READY
        # (docs/failover.md, "Drain"). Nothing needs to be lost; the criterion is <= 1.
        assert losses[c] <= 1, \
            f"{c} lost {losses[c]} pings in a planned hand-off; loss counters: {counted}"
    cluster.assert_sas_kept()

    # undrain + rebalance: the rendezvous choice over the ready nodes again
    members = [*cluster.ready_nodes(), "router", "server", *CLIENTS]
    loss_before = loss_counters(cluster, members)
    assert cluster.ctl("node", "undrain", node)["state"] == "ready"
    back_at = time.time()
    moves = cluster.ctl("rebalance")["moves"]
    owners = cluster.settled()
    expected = rendezvous(cluster, cluster.ready_nodes())
    print(f"  undrain + rebalance: {len(moves)} move(s) written at once; owners {owners}")
    assert owners == expected
    assert sorted(c for c, n in owners.items() if n == node) == moving
    time.sleep(1.0)
    counted = counted_losses(loss_before, loss_counters(cluster, members))
    print(f"  loss counters moving back: {counted}")
    for c in moving:
        _, lost = cluster.window(c, back_at, time.time())
        print(f"  {c}: {lost} lost ping(s) moving back to {node}")
        assert lost <= 1, f"{c} lost {lost} pings moving back; loss counters: {counted}"
    cluster.assert_sas_kept()


IDLE_CLIENTS = 8       # clients without traffic added for the join scenario
MAX_IDLE_CLIENTS = 16


def test_fourth_node_takes_about_a_quarter_without_rekeying(cluster: Cluster) -> None:
    lab = cluster.lab
    # Four clients alone say little about "a quarter" (none moves 32 % of the time): at least
    # eight more that hold their SAs without traffic join the count, more if the rendezvous
    # choice with the new node would move none of them (their IKE SA ids are random).
    joining = f"node-{lab.state.nodes + 1}"
    i = 0
    while i < IDLE_CLIENTS or (i < MAX_IDLE_CLIENTS and joining not in rendezvous(
            cluster, [*cluster.ready_nodes(), joining]).values()):
        i += 1
        lab.add_client(f"idle{i}")
        cluster.sas[f"idle{i}"] = cluster.one_sa(f"idle{i}")
    before = cluster.settled()
    new = faults.add_node(lab)
    cluster.ctl("rebalance")
    after = cluster.settled()
    moved = sorted(c for c in cluster.sas if after[c] != before[c])
    expected = rendezvous(cluster, cluster.ready_nodes())
    total = len(cluster.sas)
    print(f"\n{new} joined: {len(moved)} of {total} clients moved to it "
          f"({len(moved) / total:.0%}; rendezvous expects "
          f"{sum(1 for n in expected.values() if n == new)}): {moved}")
    assert after == expected
    assert all(after[c] == new for c in moved), "a client moved between old nodes"
    assert moved, "no client moved to the new node"
    cluster.wait_answers(list(CLIENTS), time.time())
    for c in moved:
        assert lab.ping(c, settle_s=10), f"{c} has no path through {new}"
    cluster.assert_sas_kept()


def _counter_then_owners(cluster: Cluster, node: str, ids: dict[str, str]
                         ) -> tuple[int, set[str]]:
    """The ESP count of `node`, then (read after it) which of `ids` are assigned to it."""
    count = faults.esp_sent(cluster.lab, node)
    owned = {c for c, i in ids.items()
             if (cluster.lab.etcd_json(f"assign/{i}") or {}).get("node") == node}
    return count, owned


def test_partitioned_node_stops_sending_and_stays_quiet(cluster: Cluster) -> None:
    lab = cluster.lab
    before = cluster.settled()
    node = busiest(before)
    victims = sorted(c for c, n in before.items() if n == node)
    ids = {c: row["ike_sa_id"] for c, row in cluster.clients().items()}
    vip = cluster.one_sa(victims[0]).virtual_ip
    assert vip is not None
    # Traffic the node itself sends towards its client (through its TUN): while it thinks it
    # owns the client it encrypts and sends it, so this shows when it stops.
    faults.count_esp_sent(lab, node)
    lab.spawn_in(node, "inject", ["ping", "-n", "-q", "-i", PING_INTERVAL, vip])
    time.sleep(1.0)
    assert faults.esp_sent(lab, node) > 0, "the owner sent no ESP before the cut"
    cut_at = time.time()
    faults.cut_link(lab, node)
    last, last_change = faults.esp_sent(lab, node), time.time()
    while time.time() < cut_at + LEASE_TTL_S + 4.0:
        n = faults.esp_sent(lab, node)
        if n != last:
            last, last_change = n, time.time()
        time.sleep(0.05)
    stopped_after = last_change - cut_at
    cluster.wait_answers([c for c in victims if c in CLIENTS], cut_at + stopped_after)
    moved_to = cluster.owners()
    print(f"\n{node} partitioned (nft drop on its eth0): last ESP {stopped_after * 1000:.0f} ms "
          f"after the cut (lease TTL {LEASE_TTL_S:g} s); its clients {victims} now on "
          f"{[moved_to[c] for c in victims]}")
    assert stopped_after <= LEASE_TTL_S + 1.0 + 0.5, "the partitioned node kept sending"
    assert all(moved_to[c] != node for c in victims)

    # The link returns: the node sends nothing on SAs it no longer owns. (The sprayer may
    # hand a client back once the node is healthy again: the count ends when that is written.)
    pinging = [c for c in victims if c in CLIENTS]
    for c in pinging:
        gap, lost = cluster.window(c, cut_at, time.time())
        print(f"  {c}: longest gap {gap * 1000:.0f} ms, {lost} lost pings")
    base = faults.esp_sent(lab, node)
    faults.restore_link(lab, node)
    restored_at = time.time()
    quiet_until = restored_at
    leaked = 0
    while time.time() < restored_at + 5.0:
        count, owned = _counter_then_owners(cluster, node, {c: ids[c] for c in victims})
        if owned:
            break
        leaked, quiet_until = count - base, time.time()
        time.sleep(0.1)
    lab.kill("inject", signal.SIGINT)   # (fails if the traffic towards the client had stopped)
    refused = cluster.node_metric(node, "drops_total").get(
        'ipsec_cluster_node_drops_total{reason="not_owner"}', 0)
    print(f"  link back: {leaked} ESP packet(s) sent by {node} in the "
          f"{(quiet_until - restored_at) * 1000:.0f} ms it owned none of them "
          f"(its not_owner drops since it started: {refused:.0f})")
    # the sprayer hands clients back once the node has registered again and answered 3
    # probes (its health damping; 100 ms apart in the lab), then the rebalance: a few tenths
    # of a second. 0.3 s of ESP towards the client every 10 ms is ~30 packets the node would
    # have sent, had it believed it still owned the client; such a node would send them at
    # once, before reading etcd again.
    assert quiet_until - restored_at > 0.3, "too short a window to say anything"
    assert leaked == 0
    cluster.settled()
    cluster.wait_answers(list(CLIENTS), time.time())
    cluster.assert_sas_kept()


def _leader(lab: Lab) -> str | None:
    import etcd3

    client = etcd3.client(host="127.0.0.1", port=lab.state.etcd_port, timeout=5)
    try:
        value, _ = client.get(f"/ipsec-cluster/{lab.name}/sprayer/leader")
    finally:
        client.close()
    return None if value is None else value.decode()


def _wait(what: str, ready: Callable[[], bool], timeout_s: float) -> float:
    start = time.monotonic()
    while not ready():
        assert time.monotonic() - start < timeout_s, f"timed out waiting for {what}"
        time.sleep(0.05)
    return time.monotonic() - start


def test_sprayer_leader_killed_standby_takes_over(cluster: Cluster) -> None:
    lab = cluster.lab
    cluster.settled()
    assert _leader(lab) == "sprayer-1"
    time.sleep(1.0)
    killed_at = time.time()
    lab.kill("sprayer", signal.SIGKILL)
    took = _wait("sprayer-2 to lead", lambda: _leader(lab) == "sprayer-2", LEASE_TTL_S + 10)
    time.sleep(1.0)
    rows = []
    for c in CLIENTS:
        gap, lost = cluster.window(c, killed_at, time.time())
        rows.append((c, f"{gap * 1000:.0f} ms", lost))
    _table(f"sprayer-1 killed with SIGKILL; sprayer-2 leads after {took * 1000:.0f} ms "
           f"(lease TTL {LEASE_TTL_S:g} s)", ("client", "longest gap", "lost pings"), rows)
    for c, _, lost in rows:
        # the kernel keeps forwarding with the last map: 0 expected; a sanity bound on noise
        assert int(lost) <= 5, f"{c} lost {lost} pings while the leader changed"
    # the new leader does the leader's work: a new client is assigned and steered
    lab.add_client("erin")
    assert lab.ping("erin", settle_s=20)
    cluster.assert_sas_kept()
