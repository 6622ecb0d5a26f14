"""`clusterctl health`: exit 1 when the cluster is degraded (for monitoring and scripts)."""

from __future__ import annotations

import sys
from typing import Any

import click

from cluster.cli.context import connect, connection_options
from cluster.cli.output import emit, make_table
from cluster.cli.view import health_findings, read_snapshot


def _table(doc: dict[str, Any]) -> Any:
    if not doc["findings"]:
        return "[green]healthy[/green]: keyd registered, nodes ready, every client owned"
    verdict = "healthy (with warnings)" if doc["healthy"] else "DEGRADED"
    return make_table(["severity", "check", "message"],
                      [(f["severity"], f["check"], f["message"]) for f in doc["findings"]],
                      title=verdict)


@click.command()
@connection_options()
def health() -> None:
    """Check the cluster; exit status 1 if degraded (no keyd, no ready node, clients on a
    node that is gone, a stuck hand-off, unassigned clients)."""
    findings = health_findings(read_snapshot(connect()))
    healthy = not any(f["severity"] == "error" for f in findings)
    emit({"healthy": healthy, "findings": findings}, _table)
    if not healthy:
        sys.exit(1)
