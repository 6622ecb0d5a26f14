"""`clusterctl`: the operator CLI. Noun groups with verb commands.

Exit status: 0 ok, 1 operational failure (etcd unreachable, no such node, degraded health),
2 usage error. Errors are one line on stderr; no traceback reaches the operator.
"""

from __future__ import annotations

import importlib
import logging
import signal
import sys
from types import FrameType
from typing import Any

import click

from cluster.cli.context import CliFailure, connection_options
from cluster.config import ConfigError
from cluster.start import EXIT_INTERRUPTED, interrupted_while_starting, say_from_handler
from cluster.store.errors import StoreError
from cluster.store.keyspace import BadKey
from cluster.store.records import MalformedRecord
from cluster.store.seal import DataKeyError, WrongDataKey

# Command groups live in their own modules under cluster/cli/; each exposes one click group
# or command named like the module. Missing modules are skipped so a partial install still runs.
_GROUPS = ("status", "health", "node", "client", "sa", "policy", "keyd", "rebalance", "watch",
           "lab")


class _Cli(click.Group):
    """Turns every failure below into one line and an exit status."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            # Ctrl-C (e.g. ending `watch`): not a failure of the command; click would print
            # "Aborted!" and exit 1.
            click.echo("interrupted", err=True)
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except BadKey as exc:
            raise click.UsageError(str(exc)) from None
        except (StoreError, ConfigError, DataKeyError, WrongDataKey, MalformedRecord,
                OSError) as exc:
            raise CliFailure(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) \
                from None
        except Exception as exc:
            logging.getLogger("clusterctl").debug("internal error", exc_info=True)
            raise CliFailure(f"internal error: {type(exc).__name__}: {exc}") from None


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@connection_options(with_env=True)
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


EXIT_TERMINATED = 128 + signal.SIGTERM


def _terminated(signum: int, frame: FrameType | None) -> None:
    """SIGTERM: unwind like Ctrl-C, so what a command started is undone (`lab up` removes
    the half-built lab, `watch` stops its watch); a second SIGTERM waits for that.
    The line goes out with `say_from_handler` (lab progress lines may be half written)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    say_from_handler("terminated")
    raise SystemExit(EXIT_TERMINATED)


def main() -> None:
    if signal.getsignal(signal.SIGINT) is interrupted_while_starting:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminated)
    try:
        cli.main(standalone_mode=True)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
