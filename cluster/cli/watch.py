"""`clusterctl watch`: stream cluster events as they happen (the events hooks receive)."""

from __future__ import annotations

import json
import threading

import click

from cluster.cli.context import connect, connection_options, settings
from cluster.cli.output import console
from cluster.hooks.event import HookEvent
from cluster.hooks.feed import ClusterFeed
from cluster.store.keyspace import spi_hex


def _line(e: HookEvent) -> str:
    parts = [f"[bold]{e.event}[/bold]", f"rev {e.revision}"]
    for label, value in (("client", e.client_id or e.ike_sa_id), ("vip", e.virtual_ip),
                         ("peer", e.peer), ("node", e.node), ("from", e.old_node),
                         ("address", e.node_address), ("spi", spi_hex(e.spi_in)),
                         ("replaces", spi_hex(e.old_spi_in))):
        if value:
            parts.append(f"{label}={value}")
    return " ".join(parts)


@click.command()
@click.option("--count", type=click.IntRange(1), help="stop after this many events")
@connection_options()
def watch(count: int | None) -> None:
    """Stream client-up/down/moved, sa-rekeyed and node-up/down/draining events until
    interrupted (-o json: one JSON object per line, the hooks' schema)."""
    as_json = settings().output == "json"
    out = console()
    seen = 0
    done = threading.Event()
    lock = threading.Lock()

    def on_events(events: list[HookEvent]) -> None:
        nonlocal seen
        with lock:
            for e in events:
                if done.is_set():
                    return
                if as_json:
                    click.echo(json.dumps(e.to_json(), sort_keys=True))
                else:
                    out.print(_line(e))
                seen += 1
                if count is not None and seen >= count:
                    done.set()

    store = connect()
    feed = ClusterFeed(store, on_events)
    started = feed.start()
    click.echo(f"watching {store.keyspace.root} after revision {started}", err=True)
    try:
        while not done.wait(0.2):
            pass
    finally:
        feed.stop()
