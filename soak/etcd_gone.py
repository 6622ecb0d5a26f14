"""Study 3: etcd gone. In the shared lab, with every client pinging the protected server in ESP,
etcd (every member of the lab's) is stopped for `etcd_gone_s`. Figures: echo requests the clients
sent meanwhile and replies they got (data-plane packets lost: goal 0), what a new client gets
while etcd is away (a clear refusal: once keyd knows etcd is gone and the outage is past a
blip, docs/keyd.md "When etcd is unreachable"), and after etcd is started again what new
clients get until one is established (full service) and whether every old client is
answered."""

from __future__ import annotations

import time
from typing import Any

from bench.esp_client import longest_silence
from keyd.engine import ETCD_REFUSE_AFTER_S
from soak.budget import Budget

METHOD = (
    "In the shared lab, with every client pinging the protected server in ESP, etcd (every "
    "member of it) is stopped; once keyd says it knows (keyd_etcd_available 0) and the "
    f"outage is past a blip ({ETCD_REFUSE_AFTER_S:g} s more), a new client (the project's "
    "initiator) tries to connect; after etcd is started again a new client is tried every "
    "half second until one is established.")


def _keyd(session: Any, name: str) -> float:
    from bench.failover_lab import scrape
    return sum(scrape(session.lab, "keyd-1", 9410, (name,)).values())


def _try_client(session: Any, timeout_s: float) -> tuple[str, str, float]:
    """("established" | "refused" | "no answer", what the client saw, seconds)."""
    t = time.monotonic()
    try:
        c = session.connect(timeout_s)
    except Exception as exc:
        what = f"{type(exc).__name__}: {str(exc)[:160]}"
        kind = "refused" if "refused" in str(exc) else \
            "no answer" if "no answer" in str(exc) else "failed"
        return kind, what, time.monotonic() - t
    session.extra.append(c)
    return "established", f"established, virtual IP {c.virtual_ip}", time.monotonic() - t


def run(session: Any, budget: Budget) -> dict[str, Any]:
    clients = session.clients
    sent0 = sum(c.sent for c in clients)
    t0 = time.monotonic()
    refused0 = _keyd(session, "keyd_ike_sa_init_refused_total")
    session.lab.kill("etcd")
    t_stopped = time.monotonic()
    noticed_s = None
    while time.monotonic() - t_stopped < budget.etcd_gone_s / 2:
        if _keyd(session, "keyd_etcd_available") == 0:
            noticed_s = time.monotonic() - t_stopped
            break
        time.sleep(0.2)
    time.sleep(ETCD_REFUSE_AFTER_S + 0.5)
    kind, during, took = _try_client(session, budget.etcd_gone_s / 3)
    refused = _keyd(session, "keyd_ike_sa_init_refused_total") - refused0
    during += (f"; keyd knew etcd was gone {noticed_s:.1f} s after the stop"
               if noticed_s is not None else "; keyd did not say etcd was gone") + \
        f", new clients refused meanwhile: {refused:g}"
    rest = budget.etcd_gone_s - (time.monotonic() - t_stopped)
    if rest > 0:
        time.sleep(rest)
    t1 = time.monotonic()
    sent1 = sum(c.sent for c in clients)
    replies = sum(sum(1 for r in c.replies if t0 <= r < t1) for c in clients)
    silences = [longest_silence(c.replies, t0, t1) for c in clients]
    session.lab.start("etcd")
    t_back = time.monotonic()
    attempts = []
    full_s = None
    while time.monotonic() - t_back < budget.etcd_return_s:
        got, what, _ = _try_client(session, 10.0)
        attempts.append(what)
        if got == "established":
            full_s = time.monotonic() - t_back
            break
        time.sleep(0.5)
    old_answering = session.answering(clients, within_s=1.0)
    return {
        "method": METHOD,
        "gone_s": round(t1 - t_stopped, 1), "clients": len(clients),
        "echoes_sent": sent1 - sent0, "replies": replies,
        "lost": max(0, sent1 - sent0 - replies),
        "worst_silence_s": round(max(silences, default=0.0), 3),
        "new_client_during": during, "new_client_during_kind": kind,
        "new_client_during_s": round(took, 1),
        "keyd_noticed_s": None if noticed_s is None else round(noticed_s, 1),
        "refused_during": refused,
        "full_service_s": None if full_s is None else round(full_s, 1),
        "attempts_after": len(attempts), "first_refusals_after": attempts[:-1][:3],
        "old_clients_answering_after": old_answering,
    }
