"""What the figures were measured on: CPU, cores, memory, load, kernel, Python, date."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _mem_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / (1 << 20)
    return 0.0


def describe() -> dict[str, str]:
    load = os.getloadavg()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "memory": f"{_mem_gib():.1f} GiB",
        "load": f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min)",
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def load_now() -> float:
    return os.getloadavg()[0]
