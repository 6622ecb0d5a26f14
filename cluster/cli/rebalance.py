"""`clusterctl rebalance [--dry-run]`: start the planned moves the planner asks for."""

from __future__ import annotations

import sys
from typing import Any

import click

from cluster.cli.context import connect, connection_options
from cluster.cli.ops import RebalanceInterrupted
from cluster.cli.ops import rebalance as run_rebalance
from cluster.cli.output import emit, make_table
from cluster.cli.view import read_snapshot


def _table(doc: dict[str, Any]) -> Any:
    if not doc["moves"]:
        return "balanced: every client is on its planned node"
    return make_table(["client", "identity", "from", "to", "epoch", "reason", "result"],
                      [(m["ike_sa_id"], m["identity"], m["from"], m["to"], m["epoch"],
                        m["reason"], m["result"]) for m in doc["moves"]],
                      title="planned moves (dry run)" if doc["dry_run"] else "hand-offs")


@click.command()
@click.option("--dry-run", is_flag=True, help="show the moves, write nothing")
@click.option("--limit", type=click.IntRange(1), help="start at most this many moves")
@connection_options()
def rebalance(dry_run: bool, limit: int | None) -> None:
    """Move clients off draining nodes and onto their rendezvous-hash node: each becomes a
    hand-off (phase handoff, epoch + 1) the nodes and the sprayer complete."""
    store = connect()
    failure: RebalanceInterrupted | None = None
    try:
        moves = run_rebalance(store, read_snapshot(store), dry_run, limit)
    except RebalanceInterrupted as exc:
        moves, failure = exc.moves, exc   # what was written before etcd failed, then the error
    conflicts = sum(1 for m in moves if m.result == "conflict")
    emit({"dry_run": dry_run, "moves": [m.to_json() for m in moves],
          "conflicts": conflicts}, _table)
    if failure is not None:
        raise failure
    if conflicts:
        click.echo(f"error: {conflicts} assignment(s) changed meanwhile; run again", err=True)
        sys.exit(1)
