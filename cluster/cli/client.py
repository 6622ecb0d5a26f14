"""`clusterctl client list|redirect`."""

from __future__ import annotations

from typing import Any

import click

from cluster.cli.context import connect, connection_options
from cluster.cli.ops import request_redirects
from cluster.cli.output import emit, make_table
from cluster.cli.view import client_rows, read_snapshot
from cluster.store.keyspace import BadKey, parse_ike_sa_id


def ike_sa_id_ok(text: str) -> bool:
    try:
        parse_ike_sa_id(text)
    except BadKey:
        return False
    return True


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


@client.command("redirect")
@click.argument("ike_sa_ids", metavar="[IKE_SA_ID]...", nargs=-1)
@click.option("--to", "gateway", required=True, metavar="GATEWAY",
              help="the gateway to move to: an IP address or a DNS name")
@click.option("--identity", default=None, help="every client of this identity")
@click.option("--all", "everyone", is_flag=True, help="every connected client")
@connection_options()
def client_redirect(ike_sa_ids: tuple[str, ...], gateway: str, identity: str | None,
                    everyone: bool) -> None:
    """Ask established clients to reconnect to another gateway (RFC 5685 REDIRECT), e.g.
    before maintenance of this cluster. keyd sends the REDIRECT; each client connects to
    GATEWAY and deletes its IKE SA here."""
    if sum((bool(ike_sa_ids), identity is not None, everyone)) != 1:
        raise click.UsageError("name the clients: IKE_SA_ID..., --identity or --all")
    for ike_sa_id in ike_sa_ids:
        if not ike_sa_id_ok(ike_sa_id):
            raise click.BadParameter(f"not an IKE SA id (32 hex digits): {ike_sa_id!r}")
    store = connect()
    rows = request_redirects(store, read_snapshot(store), gateway, list(ike_sa_ids),
                             identity, everyone)
    emit(rows, lambda rs: make_table(["IKE SA", "identity", "to"],
                                     [(r["ike_sa_id"], r["identity"], r["gateway"])
                                      for r in rs]))
