"""Output: the stable JSON documents, or rich tables for people.

Every command builds one JSON-able value (a list of objects for `list` commands, an object
otherwise) and a table renderer over the same value, so both formats always agree.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from cluster.cli.context import settings


def console() -> Console:
    """stdout; wide enough when piped that tables are not cut."""
    stream = sys.stdout  # CliRunner swaps it, so tests see the output
    tty = stream.isatty()
    return Console(file=stream, width=None if tty else 200, highlight=False, soft_wrap=not tty)


def emit(data: Any, table: Callable[[Any], Any]) -> None:
    """Print `data` as JSON (-o json) or as what `table(data)` renders."""
    if settings().output == "json":
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        console().print(table(data))


def make_table(columns: Sequence[str], rows: Iterable[Sequence[Any]],
               title: str | None = None) -> Table:
    t = Table(*columns, title=title, title_justify="left", header_style="bold")
    for row in rows:
        t.add_row(*(cell(v) for v in row))
    return t


def key_value_table(pairs: Iterable[tuple[str, Any]], title: str | None = None) -> Table:
    t = Table(show_header=False, title=title, title_justify="left", box=None)
    t.add_column(style="bold")
    t.add_column()
    for k, v in pairs:
        t.add_row(k, cell(v))
    return t


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(cell(v) for v in value) or "-"
    return str(value)


def age(epoch_s: float | None, now: float | None = None) -> str:
    """A timestamp as an age for tables: 4s, 3m, 2h, 5d."""
    if not epoch_s:
        return "-"
    delta = max(0.0, (time.time() if now is None else now) - epoch_s)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            return f"{int(delta // size)}{unit}"
    return f"{int(delta)}s"
