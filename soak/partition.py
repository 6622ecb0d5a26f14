"""Study 4: partition. In the shared lab, a planned drain and undrain of one node first (its
clients handed off and back); then the node carrying the most clients has its only link cut
(cluster.lab.faults.cut_link: etcd, the sprayer, keyd and the server unreachable; the process
alive). Its clients' return traffic is generated inside the node (a ping from the node's own
namespace to each client's virtual IP goes out through its data plane), so that the node has
something to send after the cut: the time until its ESP output stops is the time until it
fences itself (goal: at most the lease TTL + 1 s). Then the time until each of its clients is
answered again, through another node."""

from __future__ import annotations

import time
from typing import Any

from soak.budget import Budget

METHOD = (
    "In the shared lab: a planned drain and undrain of the node carrying the most clients, "
    "then its only link cut (`cluster.lab.faults.cut_link`: etcd, the sprayer, keyd and the "
    "server unreachable, the process alive). A ping from inside the node to each of its "
    "clients' virtual IPs keeps giving it something to send; its ESP output is counted "
    "before the cut drops it (`faults.count_esp_sent`).")
LEASE_TTL_S = 3.0  # the lab's lease_ttl_s (cluster/lab/daemons.py)


def run(session: Any, budget: Budget) -> dict[str, Any]:
    own = session.owner_of()
    counts: dict[str, int] = {}
    for n in own.values():
        if n != "?":
            counts[n] = counts.get(n, 0) + 1
    victim = max(sorted(counts), key=lambda n: counts[n])
    moved = [c for c in session.clients if own[c.name] == victim]
    # a planned hand-off there and back first
    session.drain(victim, True)
    time.sleep(2)
    drained_to = session.owner_of()
    session.drain(victim, False)
    time.sleep(2)
    pingers = [session.in_member(victim, ["ping", "-q", "-i", "0.01", c.virtual_ip])
               for c in moved]
    try:
        session.count_esp(victim)
        time.sleep(1)
        before = session.esp_sent(victim)
        t0 = time.monotonic()
        session.cut(victim, True)
        last, last_at = session.esp_sent(victim), time.monotonic()
        served_at: dict[str, float] = {}
        deadline = t0 + budget.partition_watch_s
        while time.monotonic() < deadline:
            now = time.monotonic()
            n = session.esp_sent(victim)
            if n != last:
                last, last_at = n, now
            for c in moved:
                if c.name not in served_at and c.replies and c.replies[-1] > t0 + 0.05:
                    served_at[c.name] = c.replies[-1]
            if len(served_at) == len(moved) and now - last_at > LEASE_TTL_S + 2:
                break
            time.sleep(0.05)
        fenced_s = last_at - t0
        after_owner = session.owner_of()
    finally:
        for p in pingers:
            p.kill()
            p.wait()
        session.cut(victim, False)
    sent_before_cut = before
    gaps = {name: round(t - t0, 2) for name, t in served_at.items()}
    return {
        "method": METHOD,
        "node": victim, "clients": len(moved), "lease_ttl_s": LEASE_TTL_S,
        "esp_before_cut": sent_before_cut, "esp_after_cut": last - before,
        "fenced_s": round(fenced_s, 2),
        "fence_ok": fenced_s <= LEASE_TTL_S + 1,
        "served_again": len(served_at), "worst_served_s": max(gaps.values(), default=None),
        "served_s": gaps,
        "new_owners": sorted({after_owner.get(c.name, "?") for c in moved}),
        "drained_owners": sorted({drained_to.get(c.name, "?") for c in moved}),
    }
