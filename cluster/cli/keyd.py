"""`clusterctl keyd list`."""

from __future__ import annotations

from typing import Any

import click

from cluster.cli.context import connect, connection_options
from cluster.cli.output import age, emit, make_table
from cluster.cli.view import keyd_rows, read_snapshot


@click.group()
def keyd() -> None:
    """keyd instances (the IKE responders)."""


@keyd.command("list")
@connection_options()
def keyd_list() -> None:
    """Registered keyd instances and how many IKE SAs each negotiated."""

    def table(rows: list[dict[str, Any]]) -> Any:
        return make_table(["id", "address", "version", "up", "IKE SAs"],
                          [(r["id"], r["address"], r["version"], age(r["started_at"]),
                            r["ike_sas"]) for r in rows])

    emit(keyd_rows(read_snapshot(connect())), table)
