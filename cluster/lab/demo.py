"""`clusterctl lab demo`: two strongSwan clients ping the protected server; the node carrying
most of them is killed; the clients keep their IKE SAs (same SPIs) and the table shows how
long the pings stopped."""

from __future__ import annotations

import itertools
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cluster.lab import addresses as A
from cluster.lab import netns
from cluster.lab.errors import LabError
from cluster.lab.lab import Lab
from cluster.lab.strongswan import IkeSaView

PING_INTERVAL_S = 0.1
STEERED_TIMEOUT_S = 20.0
_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from [\da-fA-F.:]+: icmp_seq=(\d+)", re.M)


@dataclass(frozen=True, slots=True)
class ClientOutcome:
    """What one client saw across the failure."""

    client: str
    node_before: str
    node_after: str
    ike_spis_before: str
    ike_spis_after: str
    child_spis_before: str
    child_spis_after: str
    gap_s: float          # the longest time between two answered pings after the kill
    lost: int             # pings without an answer after the kill

    @property
    def kept_sa(self) -> bool:
        return self.ike_spis_before == self.ike_spis_after and \
            self.child_spis_before == self.child_spis_after


def owners(lab: Lab) -> dict[str, str]:
    """Client virtual IP → the node the router sends its traffic to (the sprayer's /32s)."""
    by_address = {f"10.30.0.{10 + i}": f"node-{i}" for i in range(1, lab.state.nodes + 1)}
    out = netns.in_ns(lab.ns("router"), ["ip", "-4", "route", "show", "table", "main"]).stdout
    result = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] == "via" and parts[2] in by_address:
            result[parts[0].removesuffix("/32")] = by_address[parts[2]]
    return result


def _spis(sa: IkeSaView) -> tuple[str, str]:
    return (f"{sa.spi_i}_i {sa.spi_r}_r",
            " ".join(f"{i}/{o}" for i, o in sa.child_spis))


def _one_sa(lab: Lab, client: str) -> IkeSaView:
    sas = [sa for sa in lab.client_sas(client) if sa.state == "ESTABLISHED"]
    if len(sas) != 1:
        raise LabError(f"{client} holds {len(sas)} established IKE SAs, expected 1")
    return sas[0]


def replies(log: Path) -> list[tuple[float, int]]:
    """(time, icmp_seq) of each answered ping in a `ping -D` log."""
    return [(float(t), int(seq)) for t, seq in _REPLY.findall(log.read_text(errors="replace"))]


def gap_after(answers: list[tuple[float, int]], since: float, until: float) -> tuple[float, int]:
    """The longest silence between answers (or the window's edges) in [since, until], and how
    many pings in that window went unanswered."""
    inside = [(t, s) for t, s in answers if since <= t <= until]
    times = [since] + [t for t, _ in inside] + [until]
    gap = max(b - a for a, b in itertools.pairwise(times))
    earlier = [s for t, s in answers if t < since]
    if not inside:
        return gap, round((until - since) / PING_INTERVAL_S)
    first = earlier[-1] if earlier else inside[0][1] - 1
    return gap, max(0, inside[-1][1] - first - len(inside))


def run(lab: Lab, clients: tuple[str, ...] = ("alice", "bob"), settle_s: float = 3.0,
        observe_s: float = 8.0, step: Callable[[str], None] = lambda _: None,
        ) -> tuple[str, list[ClientOutcome]]:
    """Add the clients, ping, kill the busiest node; returns (that node, outcomes)."""
    for c in clients:
        step(f"connecting {c} (strongSwan) to the VIP")
        lab.add_client(c)
    step("pinging the protected server from every client")
    logs = {}
    for c in clients:
        rec = lab.spawn_in(c, f"ping:{c}", ["ping", "-D", "-n", "-i", str(PING_INTERVAL_S),
                                            "-W", "1", A.SERVER_IP])
        logs[c] = Path(rec.log)
    sas = {c: _one_sa(lab, c) for c in clients}
    # The sprayer steers a new client within a moment: wait until every client has a node
    # and its pings are answered, then let them run a little before the kill.
    deadline = time.monotonic() + STEERED_TIMEOUT_S
    while True:
        route = owners(lab)
        waiting = [c for c in clients
                   if (sas[c].virtual_ip or "") not in route or not replies(logs[c])]
        if not waiting:
            break
        if time.monotonic() > deadline:
            raise LabError(f"{', '.join(waiting)}: no node steered to or no ping answered "
                           f"after {STEERED_TIMEOUT_S:g}s")
        time.sleep(0.2)
    time.sleep(settle_s)
    route = owners(lab)
    before = {c: route.get(sas[c].virtual_ip or "", "?") for c in clients}
    counts: dict[str, int] = {}
    for node in before.values():
        counts[node] = counts.get(node, 0) + 1
    victim = max(sorted(counts), key=lambda n: counts[n])
    if victim == "?":
        raise LabError("the router has no route for the clients' virtual IPs: is the sprayer "
                       "steering?")
    step(f"killing {victim} (SIGKILL), which carries {counts[victim]} client(s)")
    killed_at = time.time()
    lab.kill(victim, signal.SIGKILL)
    step(f"watching the pings for {observe_s:g}s")
    time.sleep(observe_s)
    until = time.time()
    route = owners(lab)
    outcomes = []
    for c in clients:
        after = _one_sa(lab, c)
        gap, lost = gap_after(replies(logs[c]), killed_at, until)
        (ike_b, child_b), (ike_a, child_a) = _spis(sas[c]), _spis(after)
        outcomes.append(ClientOutcome(
            client=c, node_before=before[c], node_after=route.get(after.virtual_ip or "", "?"),
            ike_spis_before=ike_b, ike_spis_after=ike_a, child_spis_before=child_b,
            child_spis_after=child_a, gap_s=gap, lost=lost))
    for c in clients:
        lab.kill(f"ping:{c}", signal.SIGINT)
    return victim, outcomes
