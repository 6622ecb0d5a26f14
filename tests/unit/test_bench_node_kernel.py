"""bench/node_kernel's report: the guest's result line read from the VM's console, sums and
rates per gateway, the rows and their ratio; /proc/stat's busy time; a skipped benchmark
leaves its section of docs/benchmarks.md alone; charon's kernel-IPsec configuration."""

from __future__ import annotations

import json
import os
import types
from pathlib import Path
from typing import Any

import pytest

import bench.__main__ as bench_main
from bench import Skipped, busy_seconds, libipsec
from bench import node_kernel as nk

TICK = os.sysconf("SC_CLK_TCK")


def _blast(delivered: int, send_s: float, busy_s: float = 1.0) -> dict[str, Any]:
    return {"delivered": delivered, "sent": 20_000, "send_s": send_s,
            "wall_s": send_s + 0.5, "busy_s": busy_s}


def _result() -> dict[str, Any]:
    return {
        "vm": {"machine": "QEMU TCG CPU version 2.5+, 2 cores, Linux 6.1.0-57-amd64",
               "accel": "TCG", "kernel": "6.1.0-57-amd64"},
        "packets": 20_000, "packet_bytes": 1400, "esp_proposal": "aes128gcm16-esn",
        "node": {"blasts": [_blast(9_000, 3.0, 2.0), _blast(9_000, 3.0, 2.0),
                            _blast(6_000, 3.0, 2.0)], "own_count": 24_000, "checkpoints": 40},
        "strongswan": {"blasts": [_blast(10_000, 2.5, 2.0), _blast(10_000, 2.5, 2.0),
                                  _blast(4_000, 2.0, 1.0)], "own_count": 24_000},
    }


def test_parse_result_takes_the_last_result_line_among_console_noise() -> None:
    data = {"node": {}, "strongswan": {}, "n": 1}
    console = ("[    0.000000] Linux version 6.1.0\nsome output\n"
               f"{nk.RESULT}{json.dumps({'n': 0})}\n{nk.RESULT}{json.dumps(data)}\n"
               "[   42.1] reboot: Power down\n")
    assert nk.parse_result(console) == data


def test_parse_result_without_a_result_says_what_the_vm_printed() -> None:
    with pytest.raises(ValueError, match=r"no result from the VM: .*charon did not start"):
        nk.parse_result("booting\nnode_kernel failed in the VM: charon did not start\n")


def test_summary_sums_blasts_and_rates_each_blast() -> None:
    s = nk.summary(_result()["node"])
    assert s["delivered"] == 24_000 and s["send_s"] == 9.0 and s["busy_s"] == 6.0
    assert s["own_count"] == 24_000
    assert s["pps"] == pytest.approx(24_000 / 9.0)
    assert s["per_cpu"] == pytest.approx(4_000)
    assert s["each"] == pytest.approx([3_000, 3_000, 2_000])


def test_summary_of_nothing_measured_has_zero_rates() -> None:
    s = nk.summary({"blasts": [_blast(0, 0.0, 0.0)], "own_count": 0})
    assert s["pps"] == 0.0 and s["per_cpu"] == 0.0 and s["each"] == [0.0]


def test_pair_ratios_compare_blasts_run_one_after_the_other() -> None:
    r = _result()
    node, swan = nk.summary(r["node"]), nk.summary(r["strongswan"])
    assert nk.pair_ratios(node, swan) == pytest.approx([0.75, 0.75, 1.0])
    swan["each"][1] = 0.0  # a blast of which nothing arrived has no ratio
    assert nk.pair_ratios(node, swan) == pytest.approx([0.75, 1.0])


def test_rows_ratio_is_node_over_strongswan_and_says_tcg() -> None:
    rows = nk.rows(_result())
    where, swan, node, cpu = rows
    assert where["value"] == "TCG" and "only the ratio" in where["note"]
    assert "QEMU TCG CPU" in where["note"]
    assert swan["value"] == pytest.approx(24_000 / 7.0) and swan["unit"] == "packets/s"
    assert node["value"] == pytest.approx(24_000 / 9.0)
    assert node["baseline"] == swan["value"]
    assert node["ratio"] == pytest.approx(7.0 / 9.0)
    assert node["goal"] == "≥ 0.9x"
    assert "3 blasts: 24,000 of 60,000" in node["note"]
    assert "per pair of blasts 0.75..1.00, median 0.75" in node["note"]
    assert cpu["value"] == pytest.approx(4_000) and cpu["baseline"] == pytest.approx(4_800)
    assert cpu["ratio"] == pytest.approx(4_000 / 4_800)


def test_rows_without_a_baseline_have_no_ratio() -> None:
    r = _result()
    r["strongswan"] = {"blasts": [_blast(0, 2.0, 0.0)], "own_count": 0}
    r["vm"]["accel"] = "unknown accelerator"
    rows = nk.rows(r)
    assert rows[2]["ratio"] is None and rows[3]["ratio"] is None
    assert "only the ratio" not in rows[0]["note"]


def test_busy_seconds_is_everything_but_idle_and_iowait() -> None:
    stat = "cpu  100 5 200 1000 50 7 9 3 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\nintr 1\n"
    assert busy_seconds(stat) == pytest.approx((100 + 5 + 200 + 7 + 9 + 3) / TICK)


def test_busy_seconds_refuses_other_text() -> None:
    with pytest.raises(ValueError):
        busy_seconds("intr 1 2 3\n")


def test_a_skipped_benchmark_keeps_its_section(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n<!-- bench:fake start -->\nold\n<!-- bench:fake end -->\n")

    def run() -> list[dict[str, Any]]:
        raise Skipped("no VM here")

    monkeypatch.setattr(bench_main, "DOC", doc)
    monkeypatch.setattr(bench_main, "available", lambda: ["fake"])
    monkeypatch.setattr(bench_main.importlib, "import_module",
                        lambda name: types.SimpleNamespace(run=run))
    assert bench_main.main(["fake"]) == 0
    assert "bench fake: skipped: no VM here" in capsys.readouterr().err
    assert "old" in doc.read_text()


def test_kernel_ipsec_gateway_conf_loads_kernel_netlink_and_the_window() -> None:
    conf = libipsec.strongswan_conf(Path("/tmp/charon.log"), kernel_ipsec=True,
                                    replay_window=1024)
    assert "kernel-libipsec" not in conf and "kernel-netlink" in conf
    assert "charon {\n  replay_window = 1024\n" in conf
    assert "replay_window" not in libipsec.strongswan_conf(Path("/tmp/charon.log"))
    swanctl = libipsec.swanctl_conf("203.0.113.10", "10.99.0.7", "10.20.0.0/24",
                                    "aes128gcm16-esn")
    assert "esp_proposals = aes128gcm16-esn" in swanctl
