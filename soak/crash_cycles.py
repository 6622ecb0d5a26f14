"""Study 2: crash cycles under traffic. In the shared lab, `crash_cycles` times: SIGKILL of a
component picked at random (a node, keyd, the sprayer, one etcd member of three), then its
restart, while every
client pings the protected server in ESP; every tenth cycle a planned drain and undrain of a
random node as well. A cycle ends when every client is answered again (or after
`crash_cycle_timeout_s`). Every ESP packet the cluster sends the clients is captured at the
clients from the start of the lab (soak/session.py): no (SPI, sequence number) pair may come
twice, nor an (SPI, IV) pair of an AEAD SA."""

from __future__ import annotations

import random
import signal
import time
from typing import Any

from bench.esp_client import longest_silence
from soak.budget import Budget

METHOD = (
    "In the shared lab, each cycle SIGKILLs one component picked at random (seeded: the same "
    "sequence every run) and starts it again with the lab's own `kill`/`start`; every tenth "
    "cycle also drains and undrains a random node (a planned hand-off). An etcd cycle kills "
    "one member of the lab's etcd cluster, picked at random as well, and starts it again "
    "(its `start` returns once the member answers `/health` again, back in the cluster); "
    "every component lists all members as its endpoints. Besides the pinging clients, one "
    "strongSwan client of the lab receives a TCP stream from the protected server's iperf3 "
    "throughout (soak/tcp_stream.py). The project's initiator clients "
    "do not rekey or re-authenticate on their own: a session the cluster lost shows as a "
    "client never answered again.")


def run(session: Any, budget: Budget) -> dict[str, Any]:
    rng = random.Random(15)
    nodes = [f"node-{i}" for i in range(1, budget.lab_nodes + 1)]
    # an etcd cycle: one member of the cluster, picked at random too
    kinds = {"node": nodes, "keyd": ["keyd-1"], "sprayer": ["sprayer"],
             "etcd": session.lab.etcd_roles()}
    clients = session.clients
    worst: dict[str, float] = {}
    cycles: dict[str, int] = {}
    by_member: dict[str, int] = {}
    stuck: list[str] = []
    stuck_clients: dict[str, list[int]] = {}  # client name -> the cycles it was unanswered
    drains = 0
    started = time.monotonic()
    done = 0
    for i in range(budget.crash_cycles):
        if time.monotonic() - started > budget.crash_cycles_max_s:
            break
        kind = rng.choice(sorted(kinds))
        member = rng.choice(kinds[kind])
        t0 = time.monotonic()
        session.lab.kill(member, signal.SIGKILL)
        session.lab.start(member)
        recovered = _settle(session, budget.crash_cycle_timeout_s)
        t1 = time.monotonic()
        if not recovered:
            stuck.append(f"cycle {i + 1} ({member}): not every client answered within "
                         f"{budget.crash_cycle_timeout_s:g} s: "
                         + "; ".join(_unanswered(session, t1)))
            for c in clients:
                if not (c.replies and t1 - c.replies[-1] < 0.2):
                    stuck_clients.setdefault(c.name, []).append(i + 1)
        gap = max(longest_silence(c.replies, t0, t1) for c in clients)
        worst[kind] = max(worst.get(kind, 0.0), gap)
        cycles[kind] = cycles.get(kind, 0) + 1
        by_member[member] = by_member.get(member, 0) + 1
        done += 1
        if (i + 1) % 10 == 0:
            node = rng.choice(nodes)
            session.drain(node, True)
            _settle(session, budget.crash_cycle_timeout_s)
            session.drain(node, False)
            _settle(session, budget.crash_cycle_timeout_s)
            drains += 1
    ended = time.monotonic()
    tcp = session.tcp.figures(started, ended) if session.tcp is not None else \
        {"tcp_error": session.tcp_error}
    final = _settle(session, 30.0)
    lost = [c.name for c in clients if not session.answering([c], within_s=1.0)]
    by_name = {c.name: c for c in clients}
    # each client unanswered past a cycle's timeout: its longest silence over the cycles
    stuck_silence = {n: round(longest_silence(by_name[n].replies, started, ended), 1)
                     for n in stuck_clients}
    capture = session.capture_summary()
    return {"method": METHOD, "cycles": done, "planned": budget.crash_cycles,
            "etcd_members": len(kinds["etcd"]), "by_member": by_member,
            "by_kind": cycles, "worst_gap_s": {k: round(v, 2) for k, v in worst.items()},
            "drains": drains, "clients": len(clients), "sessions_lost": len(lost),
            "lost": lost, "stuck": stuck, "stuck_clients": stuck_clients,
            "stuck_silence_s": stuck_silence, "settled_at_end": final, **tcp, **capture}


def _unanswered(session: Any, now: float) -> list[str]:
    """Who is not answered, so that a report explains itself: each client's name, its SPIs
    (the cluster's inbound one first: the SPI the client sends on), the node the router
    sends its traffic to, how long it has been silent, and what the client itself dropped
    of what the cluster sent it (replay, too old, integrity...)."""
    try:
        owner = session.owner_of()
    except Exception as exc:  # the router unreadable (the sprayer just killed): say so
        owner = {}
        note = f" (routes unreadable: {type(exc).__name__})"
    else:
        note = ""
    out = []
    for c in session.clients:
        if c.replies and now - c.replies[-1] < 0.2:  # as _settle judges
            continue
        silent = f"{now - c.replies[-1]:.1f} s" if c.replies else "never answered"
        drops = ", ".join(f"{r.value} {n}" for r, n in sorted(
            c.sa.drops.items(), key=lambda x: x[0].value) if n) or "none"
        out.append(f"{c.name} (SPI {c.sa.spi_out:08x} in, {c.sa.spi_in:08x} out; routed to "
                   f"{owner.get(c.name, '?')}{note}; silent {silent}; its drops so far: "
                   f"{drops}; datagrams it could not use so far: {c.bad})")
    return out or ["every client answered again just after the timeout"]


def _settle(session: Any, timeout_s: float) -> bool:
    """Until every client is answered again (True), or timeout_s (False)."""
    deadline = time.monotonic() + timeout_s
    time.sleep(0.3)
    while time.monotonic() < deadline:
        if session.answering(session.clients, within_s=0.2):
            return True
        time.sleep(0.05)
    return False
