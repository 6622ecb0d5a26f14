"""Benchmarks: `python -m bench [name...]`.

Each benchmark is a module `bench/<name>.py` with `run() -> list[Row]`; a Row is a dict with
"metric" (or "name"), "value", "unit", and optionally "baseline" (+ "baseline_name"),
"ratio", "goal", "note"; optional columns appear in the table when some row has them.
`python -m bench` runs them (all, or the names given) and rewrites each one's section of
docs/benchmarks.md, stamped with the machine (CPU model, cores, kernel) and the date.
Timing goals are measured here, never asserted in tests: the machine is shared and noisy.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

Row = dict[str, Any]


def machine() -> str:
    """CPU model, core count and kernel of this machine, one line."""
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Linux {platform.release()}"


class Skipped(Exception):
    """A benchmark that cannot run here (`run()` raises it with the reason, one line): its
    section of docs/benchmarks.md is left as it is."""


def busy_seconds(proc_stat: str) -> float:
    """CPU seconds every CPU spent not idle (user, nice, system, irq, softirq, steal), from the
    text of /proc/stat (its first, all-CPU line)."""
    line = proc_stat.split("\n", 1)[0].split()
    if not line or line[0] != "cpu" or len(line) < 8:
        raise ValueError(f"not a /proc/stat cpu line: {proc_stat[:80]!r}")
    ticks = [int(v) for v in line[1:]]
    busy = sum(ticks[:8]) - ticks[3] - ticks[4]  # less idle and iowait; guest time is in user
    return busy / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[max(0, min(98, int(q) - 1))]


def row(metric: str, value: Any, unit: str = "", note: str = "") -> Row:
    return {"metric": metric, "value": value, "unit": unit, "note": note}


def wait(pred: Callable[[], bool], timeout_s: float, what: str, step_s: float = 0.05) -> None:
    """Poll `pred` every `step_s` until it holds; TimeoutError naming `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:g}s for {what}")
        time.sleep(step_s)
