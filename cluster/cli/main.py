"""`clusterctl`: the operator CLI. Noun groups with verb commands."""

from __future__ import annotations

import importlib
import sys

import click

# Command groups live in their own modules under cluster/cli/; each exposes one click group
# or command named like the module. Missing modules are skipped so a partial install still runs.
_GROUPS = ("lab",)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Operate an ipsec-cluster: nodes, clients, SAs, keyd, and the one-machine lab."""


def _register() -> None:
    for name in _GROUPS:
        try:
            module = importlib.import_module(f"cluster.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"cluster.cli.{name}":
                continue
            raise
        cli.add_command(getattr(module, name))


_register()


def main() -> None:
    try:
        cli.main(standalone_mode=True)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
