"""`sprayer`: the daemon's command line. Errors are one line on stderr, never a traceback:
exit 2 for a bad configuration or flag, 1 for an operational failure."""
# ruff: noqa: E402  (Ctrl-C is made quiet before the slow imports below)

from __future__ import annotations

from cluster.start import quiet_interrupt_while_starting

quiet_interrupt_while_starting("sprayer")

import logging
import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from cluster.config import ConfigError, load_config
from cluster.host import DriverError
from cluster.logs import setup_logging
from cluster.store.client import Store
from cluster.store.errors import StoreError
from cluster.store.seal import DataKeyError, load_data_key
from cluster.systemd import notify_stopping
from sprayer.apply import Applier, HAProxyApplier, KernelApplier
from sprayer.daemon import Sprayer
from sprayer.settings import SprayerSettings, check, settings_from

DEFAULT_CONFIG = "/etc/ipsec-cluster/sprayer.toml"
log = logging.getLogger("sprayer")


def make_applier(s: SprayerSettings) -> Applier:
    if s.driver == "nft":
        return KernelApplier(s.vip, s.keyd, netns=s.netns)
    if s.driver == "haproxy":
        return HAProxyApplier(s.haproxy_socket, s.haproxy_backend)
    from sprayer.userspace import UserspaceApplier
    return UserspaceApplier(s.vip, s.keyd, netns=s.netns)


def fail(code: int, message: str) -> None:
    click.echo(f"sprayer: {message}", err=True)
    sys.exit(code)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", default=DEFAULT_CONFIG, show_default=True,
              help="TOML configuration (docs/configuration.md).")
@click.option("--id", "sprayer_id", help="Override [sprayer] id.")
@click.option("--driver", type=click.Choice(["nft", "userspace", "haproxy"]),
              help="Override [sprayer] driver.")
@click.option("--netns", help="Run nft/ip inside this network namespace.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
def main(config_path: str, sprayer_id: str | None, driver: str | None, netns: str | None,
         log_level: str | None) -> None:
    """Own the VIP: steer IKE to keyd and each client's ESP to its node; move clients."""
    try:
        config = load_config(Path(config_path))
        settings = settings_from(config)
        overrides: dict[str, Any] = {k: v for k, v in
                                     (("id", sprayer_id), ("driver", driver), ("netns", netns))
                                     if v is not None}
        settings = check(replace(settings, **overrides), "flags:")
        data_key = load_data_key(config.cluster.data_key_file)
        store = Store.from_config(config, data_key)
    except (ConfigError, DataKeyError, StoreError) as exc:
        fail(2, str(exc))
        return
    setup_logging(log_level or config.log.level, config.log.json)
    # A wrong key would only show as every SA skipped: no client's ESP steered.
    wrong = store.wrong_data_key(data_key)
    if wrong is not None:
        store.close()
        fail(2, wrong)
        return
    try:
        applier = make_applier(settings)
        sprayer = Sprayer(settings, store, applier)
    except (DriverError, OSError) as exc:
        fail(1, str(exc))
        return
    if config.metrics.listen:
        from prometheus_client import start_http_server
        host, _, port = config.metrics.listen.rpartition(":")
        try:
            start_http_server(int(port), host or "0.0.0.0", registry=sprayer.metrics.registry)
        except (OSError, ValueError) as exc:
            fail(1, f"metrics listen {config.metrics.listen}: {exc}")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("starting", extra={"id": settings.id, "driver": settings.driver,
                                "vip": settings.vip})
    try:
        sprayer.start()
        sprayer.run(stop)
    except Exception as exc:  # the last line of defence: one line, no traceback
        log.error("stopped by an unexpected error: %s: %s", type(exc).__name__, exc)
        sys.exit(1)
    finally:
        notify_stopping()
        sprayer.stop()
    log.info("stopped")


if __name__ == "__main__":
    main()
