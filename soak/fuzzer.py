"""One fuzz target under Atheris (libFuzzer, coverage-guided), in a process of its own.

    python -m soak.fuzzer TARGET INPUTS MAX_SECONDS STATS.json [CORPUS]

Atheris instruments the project's packages (keyd, cluster, sprayer) as they are imported, so
libFuzzer keeps the mutations that reach new code; the seeds are valid messages. Every input
is counted here: decoded, refused with a typed error, or an untyped exception (a defect). An
untyped exception does not stop the run: it is recorded (type, place, the first input that
raised it) and the run goes on, so one run reports every distinct crash. The statistics are
written to STATS.json every few thousand inputs and when the budget is reached.

CORPUS (default `<TARGET>-corpus` beside STATS.json) may be shared by several processes of one
target, each with its share of the inputs (soak/fuzzing.py splits the slowest decoder so): as
libFuzzer's own `-jobs` do, each writes the inputs that reach new code there and reloads what
the others wrote (`-reload`), so the shards explore as one corpus on several cores.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import atheris

_PACKAGES = ("keyd", "cluster", "sprayer")


def _place(exc: BaseException) -> str:
    """The innermost frame in the project's code: where the defect is."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if any(f"/{p}/" in f.filename for p in _PACKAGES)]
    f = (ours or frames)[-1]
    root = next((f.filename.rsplit(f"/{p}/", 1) for p in _PACKAGES
                 if f"/{p}/" in f.filename), None)
    name = f"{_pkg(f.filename)}/{root[1]}" if root else f.filename
    return f"{name}:{f.lineno}"


def _pkg(filename: str) -> str:
    return next(p for p in _PACKAGES if f"/{p}/" in filename)


def main(argv: list[str]) -> None:
    name, budget, max_s, stats_path = argv[1], int(argv[2]), int(argv[3]), Path(argv[4])
    # the study removes the corpus after the run
    corpus = Path(argv[5]) if len(argv) > 5 else stats_path.parent / f"{name}-corpus"
    with atheris.instrument_imports(include=list(_PACKAGES)):
        target: Any = importlib.import_module(f"soak.targets.{name}")
    corpus.mkdir(exist_ok=True)
    seeds = target.seeds()
    for i, seed in enumerate(seeds):
        path = corpus / f"seed-{i:04d}"
        if not path.exists():  # another shard's may be there already: whole files only
            tmp = corpus.parent / f".{corpus.name}-{os.getpid()}-{i}"
            tmp.write_bytes(seed)
            tmp.replace(path)
    stats: dict[str, Any] = {"target": name, "title": target.TITLE, "inputs": 0, "decoded": 0,
                             "refused": 0, "untyped": 0, "crashes": {},
                             "seeds": len(seeds), "budget": budget,
                             "engine": "atheris",
                             "started": time.time(), "elapsed_s": 0.0, "complete": False}
    deadline = time.time() + max_s
    typed = target.TYPED
    one_input = target.one_input

    def write() -> None:
        stats["elapsed_s"] = round(time.time() - stats["started"], 1)
        tmp = stats_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(stats, indent=1))
        tmp.replace(stats_path)

    def test_one(data: bytes) -> None:
        stats["inputs"] += 1
        try:
            if one_input(data) is False:
                stats["refused"] += 1  # a counted drop
            else:
                stats["decoded"] += 1
        except typed:
            stats["refused"] += 1
        except Exception as exc:
            stats["untyped"] += 1
            key = f"{type(exc).__name__} at {_place(exc)}"
            crash = stats["crashes"].setdefault(key, {"count": 0, "input": data.hex(),
                                                      "message": str(exc)[:200]})
            crash["count"] += 1
        n = stats["inputs"]
        if n % 1000 == 0:
            over = time.time() > deadline
            if over or n % 5000 == 0:
                write()
            if over:  # the time cap: stop here, with the exact count written
                os._exit(0)
        if n >= budget:
            stats["complete"] = True
            write()
            os._exit(0)

    write()
    atheris.Setup([argv[0], str(corpus), f"-max_total_time={max_s + 60}", "-max_len=2048",
                   "-timeout=20", "-rss_limit_mb=1536", "-print_final_stats=1", "-reload=1"],
                  test_one)
    atheris.Fuzz()
    write()  # libFuzzer's own time cap (a backstop) returned first


if __name__ == "__main__":
    main(sys.argv)
