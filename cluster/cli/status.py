"""`clusterctl status`: the cluster at a glance."""

from __future__ import annotations

from typing import Any

import click
from rich.console import Group

from cluster.cli.context import connect, connection_options, resolve, settings
from cluster.cli.output import emit, key_value_table, make_table
from cluster.cli.view import read_snapshot, status_doc


def _table(doc: dict[str, Any]) -> Group:
    n = doc["nodes"]
    summary = key_value_table([
        ("cluster", doc["cluster"]),
        ("etcd", ", ".join(doc["endpoints"])),
        ("revision", doc["revision"]),
        ("health", "ok" if doc["healthy"] else "DEGRADED"),
        ("nodes", f"{n['ready']} ready, {n['draining']} draining, {n['down']} down"),
        ("keyd", doc["keyd"]),
        ("clients", doc["clients"]),
        ("child SAs", doc["child_sas"]),
        ("hand-offs", doc["handoffs"]),
    ])
    per_node = make_table(["node", "clients"], sorted(doc["clients_per_node"].items()),
                          title="clients per node")
    parts: list[Any] = [summary, per_node]
    if doc["findings"]:
        parts.append(make_table(["severity", "check", "message"],
                                [(f["severity"], f["check"], f["message"])
                                 for f in doc["findings"]], title="findings"))
    return Group(*parts)


@click.command()
@connection_options()
def status() -> None:
    """Summary: nodes, keyd, clients, hand-offs, and what is wrong."""
    store = connect()
    conn = resolve(settings())
    emit(status_doc(read_snapshot(store), conn.cluster, conn.endpoints), _table)
