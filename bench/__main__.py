"""`python -m bench [name...]`: run benchmarks and rewrite their sections of docs/benchmarks.md."""

from __future__ import annotations

import argparse
import datetime
import importlib
import re
import sys
import time
from pathlib import Path

from bench import Row, Skipped, machine

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
HEADER = """# Benchmarks

Written by `make bench` (`python -m bench [name...]`); each section is rewritten by its own
benchmark, with the machine and date it ran on. The machine is shared: figures are indicative.
"""


def available() -> list[str]:
    """Modules of bench/ that define `run()` (helpers such as load generators do not)."""
    return sorted(p.stem for p in (ROOT / "bench").glob("*.py")
                  if not p.stem.startswith("_") and "\ndef run(" in p.read_text())


# columns shown when any row has them; "metric" (or "name"), "value", "unit" always are
OPTIONAL = ("baseline", "ratio", "goal", "note")


def fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def section(name: str, rows: list[Row], seconds: float) -> str:
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    cols = [c for c in OPTIONAL if any(r.get(c) not in (None, "") for r in rows)]
    lines = [f"<!-- bench:{name} start -->", f"## {name}", "",
             f"Machine: {machine()}. Date: {date}. Ran in {seconds:.0f} s.", "",
             "| " + " | ".join(["metric", "value", "unit", *cols]) + " |",
             "| --- | ---: | --- |" + " --- |" * len(cols)]
    for r in rows:
        cells = [str(r.get("metric") or r.get("name", "")), fmt(r.get("value", "")),
                 str(r.get("unit", ""))]
        for c in cols:
            v = r.get(c)
            text = "" if v is None else fmt(v)
            if c == "baseline" and r.get("baseline_name") and text:
                text = f"{text} ({r['baseline_name']})"
            cells.append(text.replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"<!-- bench:{name} end -->")
    return "\n".join(lines) + "\n"


def rewrite(name: str, text: str) -> None:
    doc = DOC.read_text() if DOC.exists() else HEADER
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} start -->.*?<!-- bench:"
                         rf"{re.escape(name)} end -->\n?", re.S)
    if pattern.search(doc):
        doc = pattern.sub(lambda _m: text, doc)
    else:
        doc = doc.rstrip("\n") + "\n\n" + text
    DOC.write_text(doc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of "
                                                 f"{', '.join(available())})")
    args = parser.parse_args(argv)
    names = args.names or available()
    unknown = [n for n in names if n not in available()]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; have: {', '.join(available())}",
              file=sys.stderr)
        return 2
    failed = 0
    for name in names:
        print(f"bench {name}: running", file=sys.stderr)
        t0 = time.monotonic()
        try:
            rows = importlib.import_module(f"bench.{name}").run()
        except Skipped as why:  # its section keeps its last result
            print(f"bench {name}: skipped: {why}", file=sys.stderr)
            continue
        except (Exception, SystemExit) as exc:  # one failing must not hide the others
            print(f"bench {name}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            failed += 1
            continue
        text = section(name, rows, time.monotonic() - t0)
        rewrite(name, text)
        print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
