"""`python -m soak [--quick] [--only STUDY,...] [--out docs/reliability.md]`: run the studies
and rewrite the reliability document from their results."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from soak import machine, report
from soak.budget import BUDGET, Budget


def _studies() -> dict[str, Callable[[Budget], dict[str, Any]]]:
    from soak import confinement, fuzzing
    return {"fuzz": fuzzing.run, "confinement": confinement.run}


def _lab_studies() -> dict[str, Callable[[Any, Budget], dict[str, Any]]]:
    """Studies run in turn in one shared lab (soak/session.py); secrets last, on all of it."""
    from soak import crash_cycles, etcd_gone, floods, partition, secrets
    return {"crash_cycles": crash_cycles.run, "etcd_gone": etcd_gone.run,
            "partition": partition.run, "floods": floods.run, "secrets": secrets.run}


def _run(name: str, study: Callable[[], dict[str, Any]], results: dict[str, Any]) -> None:
    print(f"soak: {name} ...", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    try:
        results[name] = study()
    except Exception as exc:  # one study failing must not lose the others' figures
        traceback.print_exc()
        results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    results[name]["elapsed_s"] = round(time.monotonic() - t0)
    print(f"soak: {name} done in {results[name]['elapsed_s']} s", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m soak", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small counts: check the machinery")
    ap.add_argument("--only", default="", help="comma-separated studies (default: all built)")
    ap.add_argument("--out", type=Path, default=Path("docs/reliability.md"))
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    ap.add_argument("--keep-logs", type=Path, metavar="DIR",
                    help="keep the lab's logs and configuration in DIR when it goes down "
                    "(by default only when a study fails)")
    args = ap.parse_args(argv)
    budget = BUDGET.quick() if args.quick else BUDGET
    studies, lab_studies = _studies(), _lab_studies()
    chosen = [s for s in args.only.split(",") if s] or [*studies, *lab_studies]
    unknown = set(chosen) - set(studies) - set(lab_studies)
    if unknown:
        ap.error(f"unknown studies {sorted(unknown)}; built: "
                 f"{', '.join([*studies, *lab_studies])}")
    started = machine.describe()
    t_start = time.monotonic()
    results: dict[str, Any] = {}
    for name in (n for n in studies if n in chosen):
        _run(name, lambda n=name: studies[n](budget), results)  # type: ignore[misc]
    in_lab = [n for n in lab_studies if n in chosen]
    if in_lab:
        from soak.session import LabSession
        print("soak: starting the lab ...", file=sys.stderr, flush=True)
        try:
            session = LabSession(budget.lab_nodes, budget.lab_clients,
                                 budget.lab_etcd_members)
        except Exception as exc:
            traceback.print_exc()
            for n in in_lab:
                results[n] = {"error": f"the lab did not start: {type(exc).__name__}: {exc}"}
        else:
            if args.keep_logs is not None:
                session.save_logs_to = args.keep_logs
            with session:
                for name in in_lab:
                    _run(name, lambda n=name: lab_studies[n](session, budget), results)  # type: ignore[misc]
                    if "error" in results[name] and session.save_logs_to is None:
                        session.save_logs_to = Path(tempfile.mkdtemp(prefix="soak-lab-logs-"))
                        print(f"soak: {name} failed: the lab's logs go to "
                              f"{session.save_logs_to}", file=sys.stderr, flush=True)
                # the ESP capture covers the whole lab run, every study's traffic
                if "error" not in results.get("crash_cycles", {"error": ""}):
                    results["crash_cycles"].update(session.capture_summary())
                if "error" not in results.get("etcd_gone", {"error": ""}):
                    # `lab kill etcd` stops every member
                    results["etcd_gone"]["etcd_members"] = session.lab.state.etcd_members
    ended = machine.describe()
    info = {**started, "load": f"{started['load']} at the start, {ended['load']} at the end"}
    command = "python -m soak" + (" --quick" if args.quick else "") + \
        (f" --only {args.only}" if args.only else "")
    if args.quick:
        command += " (a smoke run: counts far below the issue's)"
    args.out.write_text(report.render(info, results, budget, command,
                                      time.monotonic() - t_start))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    print(f"soak: wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
