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
             "pkts out"],
            [(r["identity"], r["virtual_ip"], r["peer"], _owner(r), r["epoch"],
              r["child_sas"], r["packets_in"], r["packets_out"]) for r in rows])

    emit(client_rows(read_snapshot(connect())), table)
