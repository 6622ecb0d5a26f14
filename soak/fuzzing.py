"""Study 1: decoder fuzzing. Each decoder of soak/targets runs under Atheris in a process of
its own (`soak.fuzzer`), `fuzz_parallel` at a time, until `fuzz_inputs` inputs or
`fuzz_max_s` seconds. Then every crash input kept in soak/crashes/ (the regression corpus of
defects found earlier and fixed) is replayed through its target: it must now be refused or
decoded, never raise an untyped exception.

Why Atheris rather than hypothesis: it is libFuzzer's coverage-guided mutation over
instrumented Python bytecode, so the inputs that reach new branches of the decoders are kept
and mutated further, at 10^4 inputs per second and more here; a hypothesis run of 10^6
examples is an order of magnitude slower and guided by strategies, not by coverage.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from soak.budget import Budget
from soak.targets import NAMES

CRASHES = Path(__file__).with_name("crashes")


def _fuzz(name: str, budget: Budget, workdir: Path) -> dict[str, Any]:
    stats_path = workdir / f"{name}.json"
    log = workdir / f"{name}.log"
    cmd = [sys.executable, "-m", "soak.fuzzer", name, str(budget.fuzz_inputs),
           str(budget.fuzz_max_s), str(stats_path)]
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT,
                              timeout=budget.fuzz_max_s + 120, check=False,
                              env={**os.environ, "PYTHONHASHSEED": "0"})
    try:
        stats: dict[str, Any] = json.loads(stats_path.read_text())
    except (OSError, ValueError):
        stats = {"target": name, "inputs": 0, "untyped": 0, "crashes": {}}
    stats["exit"] = proc.returncode
    stats["wall_s"] = round(time.monotonic() - started, 1)
    stats["cov"] = _last_cov(log)
    if not stats.get("complete") and stats["wall_s"] < budget.fuzz_max_s - 5:
        # neither the input budget nor the time cap ended it: say why (libFuzzer's last words)
        words = [ln for ln in log.read_text(errors="replace").splitlines()
                 if ln and not ln.startswith(("#", "INFO", "WARNING"))]
        stats["ended_early"] = f"exit {proc.returncode}: {' / '.join(words[-2:])[:200]}"
    return stats


def _last_cov(log: Path) -> int | None:
    """libFuzzer's last reported coverage (edges of the instrumented decoders reached)."""
    cov = None
    for line in log.read_text(errors="replace").splitlines():
        if " cov: " in line:
            with contextlib.suppress(ValueError):
                cov = int(line.split(" cov: ", 1)[1].split()[0])
    return cov


def replay_known_crashes() -> dict[str, Any]:
    """Every input of soak/crashes/<target>-*.bin through its target once more."""
    results: dict[str, Any] = {"replayed": 0, "still_failing": []}
    for path in sorted(CRASHES.glob("*.bin")):
        name = path.name.split("-", 1)[0]
        target: Any = importlib.import_module(f"soak.targets.{name}")
        results["replayed"] += 1
        try:
            target.one_input(path.read_bytes())
        except target.TYPED:
            pass
        except Exception as exc:
            results["still_failing"].append(f"{path.name}: {type(exc).__name__}: {exc}")
    return results


def run(budget: Budget) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="soak-fuzz-"))
    with ThreadPoolExecutor(budget.fuzz_parallel) as pool:
        targets = list(pool.map(lambda n: _fuzz(n, budget, workdir), NAMES))
    for t in targets:  # keep each new crash input for the regression corpus
        for i, crash in enumerate(t.get("crashes", {}).values()):
            CRASHES.mkdir(exist_ok=True)
            path = CRASHES / f"{t['target']}-new-{i}.bin"
            if not path.exists():
                path.write_bytes(bytes.fromhex(crash["input"]))
    shutil.rmtree(workdir, ignore_errors=True)  # corpora and logs: the figures are kept
    return {"targets": targets, "replay": replay_known_crashes(), "method": METHOD}


METHOD = (
    "Atheris (libFuzzer, coverage-guided over the instrumented bytecode of keyd, cluster and "
    "sprayer), one process per decoder, seeded with valid messages: real datagrams of a PSK "
    "handshake between the project's initiator and responder and one payload of every type "
    "sealed under every IKE suite; ESP packets of every cluster/esp suite with and without "
    "ESN; a record of every etcd kind; valid probes, READY messages and RADIUS answers. "
    "Where a decoder decrypts or verifies, part of each input is sealed or signed by the "
    "harness with the known key, so mutations reach what lies behind the ICV. An untyped "
    "exception is any exception other than the decoder's typed refusal (for ESP: any at all, "
    "since `SaTable.receive` only counts drops). Atheris 3.1.0 is not in this machine's "
    "package index; 3.0.0 is, and installs and runs on Python 3.11 (a manylinux wheel).")
