"""soak/report.py: a crash-cycle run that left clients unanswered names them, and the flood
section shows what the cluster shed (keyd's IKE_SA_INITs, the nodes' SA reads)."""

from __future__ import annotations

import pytest

from soak import report

pytestmark = pytest.mark.unit


def _crash(**extra: object) -> dict[str, object]:
    return {"cycles": 2, "planned": 2, "by_kind": {"node": 2}, "drains": 0, "clients": 20,
            "etcd_members": 3, "by_member": {}, "sessions_lost": 0, "lost": [],
            "worst_gap_s": {"node": 21.3}, "esp_captured": 10, "spis_captured": 20,
            "seq_reused": 0, "iv_reused": 0, "tcp_error": "not run", **extra}


def test_unanswered_clients_are_named() -> None:
    lines = report._crash_cycles(_crash(
        stuck=["cycle 2 (node-1): not every client answered within 20 s: sk7 (SPI "
               "c0de0001 in, c11e0001 out; routed to node-2; silent 20.4 s; its drops so far: "
               "none; datagrams it could not use so far: 0)"],
        stuck_clients={"sk7": [2]}, stuck_silence_s={"sk7": 20.4}))
    text = "\n".join(lines)
    assert "sk7 (SPI c0de0001 in" in text
    assert "- sk7: cycles 2; longest silence 20.4 s" in text


def test_no_unanswered_list_without_stuck_clients() -> None:
    text = "\n".join(report._crash_cycles(_crash(stuck=[], stuck_clients={},
                                                 stuck_silence_s={})))
    assert "Clients unanswered past" not in text


def test_flood_section_shows_what_was_shed() -> None:
    during = {"tried": 20, "established": 20, "median_s": 0.1, "worst_s": 0.3}
    r = {"before": during, "planned_clients": 20, "failures": [],
         "ike": {"sent": 10, "seconds": 1.0, "pps": 10, "send_errors": 0, "keyd_cpu_pct": 50,
                 "keyd_rss_mb_before": 1, "keyd_rss_mb_max": 2, "keyd_rss_mb_after": 2,
                 "cookies_sent": 5, "during": during, "shed_overload": 711_428},
         "esp": {"sent": 10, "seconds": 1.0, "pps": 10, "drops": {"unknown_spi": 5},
                 "sa_fetches": 3_067, "sa_fetches_shed": 35_623, "echoes_sent": 100,
                 "replies": 100, "lost": 0, "clients": 20, "worst_silence_s": 0.2}}
    text = "\n".join(report._floods(r))
    assert "| new IKE_SA_INITs keyd shed while behind (`overload`) | 711,428 | |" in text
    assert "| 3,067 / 35,623 | |" in text
