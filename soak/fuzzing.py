"""Study 1: decoder fuzzing. Each decoder of soak/targets runs under Atheris in a process of
its own (`soak.fuzzer`), `fuzz_parallel` at a time, until `fuzz_inputs` inputs or
`fuzz_max_s` seconds. A decoder named in `fuzz_shards` runs as that many processes instead,
first, on one shared corpus, each with its share of `fuzz_inputs` and the cap
`fuzz_split_max_s` (the IKE decoder: the slowest under instrumentation, it did not reach 10^6
inputs in one process within `fuzz_max_s` on a loaded machine). No process runs past
`fuzz_total_s` from the study's start. Then every crash input kept in soak/crashes/ (the
regression corpus of defects found earlier and fixed) is replayed through its target: it must
now be refused or decoded, never raise an untyped exception.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from soak.budget import Budget
from soak.targets import NAMES

CRASHES = Path(__file__).with_name("crashes")


@dataclass(frozen=True, slots=True)
class Job:
    """One fuzzer process: `target`'s shard `shard` of `shards`, `inputs` of the budget, at
    most `max_s` seconds."""

    target: str
    shard: int
    shards: int
    inputs: int
    max_s: int

    @property
    def label(self) -> str:
        return self.target if self.shards == 1 else f"{self.target}-{self.shard + 1}"


def jobs(budget: Budget) -> list[Job]:
    """The fuzzer processes of a run, the split decoders' shards first (the longest jobs
    first: the pool of `fuzz_parallel` then ends with the short ones on every core)."""
    split = dict(budget.fuzz_shards)
    out = []
    for name in sorted(NAMES, key=lambda n: -split.get(n, 1)):
        n = split.get(name, 1)
        cap = budget.fuzz_split_max_s if n > 1 else budget.fuzz_max_s
        out += [Job(name, i, n, budget.fuzz_inputs // n + (i < budget.fuzz_inputs % n), cap)
                for i in range(n)]
    return out


def merge(name: str, shards: list[dict[str, Any]]) -> dict[str, Any]:
    """One decoder's figures from its shards: counts added, crashes joined, the coverage and
    wall time of the widest and slowest shard."""
    if len(shards) == 1:
        return shards[0]
    out = dict(shards[0], target=name, shards=len(shards))
    for key in ("inputs", "decoded", "refused", "untyped", "budget"):
        out[key] = sum(s.get(key, 0) for s in shards)
    crashes: dict[str, Any] = {}
    for s in shards:
        for key, c in s.get("crashes", {}).items():
            crashes.setdefault(key, dict(c, count=0))["count"] += c["count"]
    out["crashes"] = crashes
    out["complete"] = all(s.get("complete") for s in shards)
    out["wall_s"] = max(s.get("wall_s", 0.0) for s in shards)
    covs = [s["cov"] for s in shards if s.get("cov") is not None]
    out["cov"] = max(covs) if covs else None
    early = [f"shard {i + 1}: {s['ended_early']}" for i, s in enumerate(shards)
             if s.get("ended_early")]
    out.pop("ended_early", None)
    if early:
        out["ended_early"] = "; ".join(early)
    return out


def _fuzz(job: Job, workdir: Path, deadline: float) -> dict[str, Any]:
    """Run one fuzzer process: its own cap, and never past the study's deadline."""
    name = job.target
    stats_path = workdir / f"{job.label}.json"
    log = workdir / f"{job.label}.log"
    max_s = max(10, min(job.max_s, int(deadline - time.monotonic())))
    cmd = [sys.executable, "-m", "soak.fuzzer", name, str(job.inputs),
           str(max_s), str(stats_path), str(workdir / f"{name}-corpus")]
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT,
                              timeout=max_s + 120, check=False,
                              env={**os.environ, "PYTHONHASHSEED": "0"})
    try:
        stats: dict[str, Any] = json.loads(stats_path.read_text())
    except (OSError, ValueError):
        stats = {"target": name, "inputs": 0, "untyped": 0, "crashes": {},
                 "budget": job.inputs}
    stats["exit"] = proc.returncode
    stats["wall_s"] = round(time.monotonic() - started, 1)
    stats["cov"] = _last_cov(log)
    stats["max_s"] = max_s
    if not stats.get("complete") and stats["wall_s"] < max_s - 5:
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
    planned = jobs(budget)
    deadline = time.monotonic() + budget.fuzz_total_s
    with ThreadPoolExecutor(budget.fuzz_parallel) as pool:
        done = list(pool.map(lambda j: _fuzz(j, workdir, deadline), planned))
    targets = [merge(n, [r for j, r in zip(planned, done, strict=True) if j.target == n])
               for n in NAMES]
    for t in targets:  # keep each new crash input for the regression corpus
        for i, crash in enumerate(t.get("crashes", {}).values()):
            CRASHES.mkdir(exist_ok=True)
            path = CRASHES / f"{t['target']}-new-{i}.bin"
            if not path.exists():
                path.write_bytes(bytes.fromhex(crash["input"]))
    shutil.rmtree(workdir, ignore_errors=True)  # corpora and logs: the figures are kept
    return {"targets": targets, "replay": replay_known_crashes(),
            "method": METHOD + _split_text(budget, targets)}


def _split_text(budget: Budget, targets: list[dict[str, Any]]) -> str:
    split = {name: n for name, n in budget.fuzz_shards if n > 1}
    if not split:
        return ""
    parts = [f"{name} as {n} processes of {budget.fuzz_inputs // n:,} inputs each"
             for name, n in split.items()]

    def rate(t: dict[str, Any]) -> float:  # inputs per second of one process
        return t["inputs"] / max(t.get("wall_s") or 0.0, 0.1) / t.get("shards", 1)

    slow = [f"{t['target']} {rate(t):,.0f}/s" for t in targets if t["target"] in split]
    others = sorted(rate(t) for t in targets if t["target"] not in split)
    return (" Split over both cores, on one shared corpus: " + "; ".join(parts) + ", run "
            f"first, each with a time cap of {budget.fuzz_split_max_s} s (the other decoders: "
            f"{budget.fuzz_max_s} s; no process runs past {budget.fuzz_total_s} s from the "
            "study's start, the bound six processes of the smaller cap had). Each process "
            "writes the inputs that reach new code to the corpus and reloads what the others "
            "found, as libFuzzer's own `-jobs` do. The IKE decoder is the slowest under "
            "instrumentation, and one process of it did not reach 10^6 inputs within the "
            "smaller cap on a loaded machine. Inputs per second of one process in this run: "
            f"{', '.join(slow)}; the other decoders "
            + (f"{others[0]:,.0f} to {others[-1]:,.0f}/s." if others else "not run."))


METHOD = (
    "Atheris (libFuzzer, coverage-guided over the instrumented bytecode of keyd, cluster and "
    "sprayer), one process per decoder (except where split, below), seeded with valid "
    "messages: real datagrams of a PSK handshake between the project's initiator and "
    "responder and one payload of every type sealed under every IKE suite; ESP packets of "
    "every cluster/esp suite with and without ESN; a record of every etcd kind; valid "
    "probes, READY messages and RADIUS answers. Where a decoder decrypts or verifies, part "
    "of each input is sealed or signed by the harness with the known key, so mutations reach "
    "what lies behind the ICV. An untyped exception is any exception other than the "
    "decoder's typed refusal (for ESP: any at all, since `SaTable.receive` only counts "
    "drops). Atheris 3.1.0 is not in this machine's package index; 3.0.0 is, and installs "
    "and runs on Python 3.11 (a manylinux wheel).")
