"""`cluster-node`: the node agent's command line. Errors are one line on stderr, never a
traceback: exit 2 for a bad configuration or flag, 1 for an operational failure."""

from __future__ import annotations

import logging
import signal
import sys
import threading

import click

from cluster import systemd
from cluster.config import ConfigError
from cluster.logs import setup_logging
from cluster.node.agent import NodeAgent
from cluster.node.config import DEFAULT_PATH, load_node_config
from cluster.node.metrics import serve_metrics
from cluster.node.tun import TunError
from cluster.store import DataKeyError, Store, StoreError, load_data_key

log = logging.getLogger("cluster.node")


def fail(code: int, message: str) -> None:
    click.echo(f"cluster-node: {message}", err=True)
    sys.exit(code)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", default=str(DEFAULT_PATH), show_default=True,
              help="TOML configuration (docs/configuration.md, [node]).")
@click.option("--id", "node_id", help="Override [node] id.")
@click.option("--vip", help="Override [node] vip.")
@click.option("--address", help="Override [node] address.")
@click.option("--tun", help="Override [node] tun.")
@click.option("--health-port", type=int, help="Override [node] health_port.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
def main(config_path: str, node_id: str | None, vip: str | None, address: str | None,
         tun: str | None, health_port: int | None, log_level: str | None) -> None:
    """Carry clients' ESP with the SAs keyd negotiated: VIP:4500 ⇄ ESP ⇄ TUN."""
    try:
        cfg = load_node_config(config_path, {"id": node_id, "vip": vip, "address": address,
                                             "tun": tun, "health_port": health_port})
        data_key = load_data_key(cfg.common.cluster.data_key_file)
        store = Store.from_config(cfg.common, data_key)
    except (ConfigError, DataKeyError, StoreError) as exc:
        fail(2, str(exc))
        return
    setup_logging(log_level or cfg.common.log.level, cfg.common.log.json)
    # A wrong key would only show as every SA skipped: no client's ESP carried.
    wrong = store.wrong_data_key(data_key)
    if wrong is not None:
        store.close()
        fail(2, wrong)
        return
    agent = NodeAgent(cfg, store)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        agent.start()
    except (TunError, OSError, StoreError) as exc:
        agent.stop()
        fail(1, str(exc))
        return
    try:
        serve_metrics(cfg.common.metrics.listen, agent.snapshot)
    except (OSError, ValueError) as exc:
        agent.stop()
        fail(1, f"metrics listen {cfg.common.metrics.listen!r}: {exc}")
        return
    log.info("node %s up: vip %s:%d, tun %s, health %s:%d", cfg.node.id, cfg.node.vip,
             cfg.node.natt_port, cfg.node.tun, cfg.node.address, cfg.node.health_port)
    try:
        stop.wait()
    finally:
        systemd.notify_stopping(f"node {cfg.node.id} leaving the cluster")
        agent.stop()
    log.info("node %s stopped", cfg.node.id)


if __name__ == "__main__":
    main()
