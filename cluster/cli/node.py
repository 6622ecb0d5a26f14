"""`clusterctl node list|drain|undrain|remove`."""

from __future__ import annotations

from typing import Any, Literal

import click

from cluster.cli.context import connect, connection_options
from cluster.cli.ops import remove_node, set_node_state
from cluster.cli.output import age, emit, make_table
from cluster.cli.view import node_rows, read_snapshot
from cluster.store.keyspace import check_name


def _node_id(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return check_name(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group()
def node() -> None:
    """Cluster nodes (the ESP data plane)."""


@node.command("list")
@connection_options()
def node_list() -> None:
    """Registered nodes, their state and how many clients each owns."""

    def table(rows: list[dict[str, Any]]) -> Any:
        return make_table(
            ["id", "address", "state", "capacity", "clients", "version", "up"],
            [(r["id"], r["address"], r["state"], r["capacity"], r["clients"], r["version"],
              age(r["started_at"])) for r in rows])

    emit(node_rows(read_snapshot(connect())), table)


def _set_state(node_id: str, state: Literal["ready", "draining"]) -> None:
    record, changed = set_node_state(connect(), node_id, state)
    doc = {"id": record.id, "state": record.state, "changed": changed}
    verb = "now" if changed else "already"
    emit(doc, lambda d: f"node {d['id']} is {verb} {d['state']}")


@node.command("drain")
@click.argument("node_id", metavar="NODE", callback=_node_id)
@connection_options()
def node_drain(node_id: str) -> None:
    """Take no new clients and hand the current ones off (state -> draining)."""
    _set_state(node_id, "draining")


@node.command("undrain")
@click.argument("node_id", metavar="NODE", callback=_node_id)
@connection_options()
def node_undrain(node_id: str) -> None:
    """Put a drained node back in service (state -> ready)."""
    _set_state(node_id, "ready")


@node.command("remove")
@click.argument("node_id", metavar="NODE", callback=_node_id)
@click.option("--force", is_flag=True, help="remove even while it still owns clients")
@connection_options()
def node_remove(node_id: str, force: bool) -> None:
    """Delete a node's record (refused while it owns clients unless --force)."""
    store = connect()
    malformed = remove_node(store, read_snapshot(store), node_id, force)
    doc: dict[str, object] = {"id": node_id, "removed": True}
    if malformed is not None:
        doc["malformed"] = malformed
    emit(doc, lambda d: f"node {d['id']} removed"
         + (f" (its record was malformed: {malformed})" if malformed else ""))
