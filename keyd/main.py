"""The `keyd` command: flags over the TOML configuration, then the daemon (`keyd/server.py`)."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import click

from cluster.logs import setup_logging
from cluster.store.errors import StoreError
from cluster.store.seal import DataKeyError, load_data_key

from .config import DEFAULT_PATH, ConfigError, load_config
from .server import KeydServer

_FLAGS = {
    "id": "keyd.id", "vip": "keyd.vip", "identity": "keyd.identity",
    "psk_file": "keyd.psk_file", "secrets_file": "keyd.secrets_file",
    "cert_file": "keyd.cert_file", "key_file": "keyd.key_file",
    "ca_file": "keyd.ca_file", "pool": "keyd.pool", "ike_port": "keyd.ike_port",
    "natt_port": "keyd.natt_port", "ike_proposal": "keyd.ike_proposals",
    "esp_proposal": "keyd.esp_proposals", "protected_network": "keyd.protected_networks",
    "dns": "keyd.dns", "endpoints": "etcd.endpoints", "cacert": "etcd.cacert",
    "cert": "etcd.cert", "key": "etcd.key", "cluster": "cluster.name",
    "data_key_file": "cluster.data_key_file", "log_level": "log.level",
    "log_json": "log.json", "metrics_listen": "metrics.listen",
}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help=f"TOML configuration (default {DEFAULT_PATH} if it exists)")
@click.option("--id", help="this instance's id (keyd/<id>)")
@click.option("--vip", help="the cluster's virtual IP (local address for IKE)")
@click.option("--identity", help="the gateway's IKE identity (IDr)")
@click.option("--psk-file", help="pre-shared key file (mode 0600)")
@click.option("--secrets-file", help="PSKs and EAP users by identity (TOML, mode 0600; "
              "read again on SIGHUP)")
@click.option("--cert-file", help="gateway certificate (PEM)")
@click.option("--key-file", help="gateway private key (PEM, mode 0600)")
@click.option("--ca-file", help="CA that signs client certificates (PEM)")
@click.option("--pool", help="client virtual IP pool (CIDR)")
@click.option("--ike-port", type=int)
@click.option("--natt-port", type=int)
@click.option("--ike-proposal", multiple=True, help="IKE proposal (repeatable)")
@click.option("--esp-proposal", multiple=True, help="ESP proposal (repeatable)")
@click.option("--protected-network", multiple=True, help="protected network CIDR (repeatable)")
@click.option("--dns", multiple=True, help="DNS server for clients (repeatable)")
@click.option("--endpoints", help="etcd endpoints, comma separated")
@click.option("--cacert", help="etcd CA certificate")
@click.option("--cert", help="etcd client certificate")
@click.option("--key", help="etcd client key")
@click.option("--cluster", help="cluster name")
@click.option("--data-key-file", help="cluster data key file (mode 0600)")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--log-json/--no-log-json", default=None)
@click.option("--metrics-listen", help='Prometheus host:port ("" disables)')
def cli(config_path: str | None, **flags: Any) -> None:
    """keyd: the IKEv2 responder that negotiates for the cluster's virtual IP."""
    if flags.get("endpoints"):
        flags["endpoints"] = tuple(e.strip() for e in flags["endpoints"].split(",") if e.strip())
    overrides = {_FLAGS[name]: value for name, value in flags.items()}
    path = config_path
    if path is None and DEFAULT_PATH.exists():
        path = str(DEFAULT_PATH)
    try:
        config = load_config(path, overrides)
        setup_logging(config.log.level, config.log.json)
        data_key = load_data_key(config.cluster.data_key_file)
        server = KeydServer(config, data_key)
    except (ConfigError, DataKeyError) as exc:
        click.echo(f"keyd: {exc}", err=True)
        sys.exit(2)
    except StoreError as exc:
        click.echo(f"keyd: {exc}", err=True)
        sys.exit(1)
    # A wrong key would skip every stored SA and seal new ones under a key nobody has.
    wrong = server.store.wrong_data_key(data_key)
    if wrong is not None:
        server.store.close()
        click.echo(f"keyd: {wrong}", err=True)
        sys.exit(2)
    try:
        asyncio.run(server.run_until_signalled())
    except OSError as exc:
        click.echo(f"keyd: {exc.strerror or exc}", err=True)
        sys.exit(1)


def main() -> None:
    try:
        cli.main(standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)
