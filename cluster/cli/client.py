"""`clusterctl client list`."""

from __future__ import annotations

from typing import Any

import click

from cluster.cli.context import connect, connection_options
from cluster.cli.output import emit, make_table
from cluster.cli.view import client_rows, read_snapshot


def _owner(row: dict[str, Any]) -> str:
    owner = row["owner"] or "-"
    if row["phase"] == "handoff":
        owner = f"{row['previous_node']} -> {owner}"
    if row["owner_alive"] is False:
        owner += " (down)"
    return owner


def _bytes(n: int | None) -> str | None:
    """Bytes for people: 1536 -> 1.5 KiB (JSON keeps the exact count)."""
    if n is None:
        return None
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return None


@click.group()
def client() -> None:
    """Connected clients (IKE SAs)."""


@client.command("list")
@connection_options()
def client_list() -> None:
    """Every client: identity, virtual IP, peer address, owner node, Child SAs, counters."""

    def table(rows: list[dict[str, Any]]) -> Any:
        return make_table(
            ["identity", "virtual IP", "peer", "owner", "epoch", "child SAs", "pkts in",
             "pkts out", "bytes"],
            [(r["identity"], r["virtual_ip"], r["peer"], _owner(r), r["epoch"],
              r["child_sas"], r["packets_in"], r["packets_out"], _bytes(r["bytes"]))
             for r in rows])

    emit(client_rows(read_snapshot(connect())), table)
