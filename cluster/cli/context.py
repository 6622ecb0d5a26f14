"""Connection options shared by every command, and the store they open.

etcdctl-style flags (`--endpoints`, `--cacert`, `--cert`, `--key`) plus `--cluster`,
`--prefix`, `--config FILE` (read [cluster] and [etcd] from a daemon's TOML), `--lab LAB`
(the lab's etcd) and `-o table|json`. They are accepted before the command
(`clusterctl --endpoints … node list`) and after it (`clusterctl node list -o json`); the
later one wins. Precedence: flag > CLUSTERCTL_* variable > --lab > --config > default.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import click

from cluster.store.client import Store
from cluster.store.public import open_store

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_ENDPOINT = "http://127.0.0.1:2379"
LAB_STATUS_TIMEOUT_S = 30.0


class CliFailure(click.ClickException):
    """An operational failure: one line on stderr, exit status 1."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


@dataclass
class Settings:
    """What the options and environment said; unset values are None."""

    values: dict[str, Any] = field(default_factory=dict)

    def get(self, name: str, default: Any = None) -> Any:
        value = self.values.get(name)
        return default if value is None else value

    @property
    def output(self) -> str:
        return str(self.get("output", "table"))


def settings(ctx: click.Context | None = None) -> Settings:
    root = (ctx or click.get_current_context()).find_root()
    if not isinstance(root.obj, Settings):
        root.obj = Settings()
    return root.obj


def _store_value(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value is not None and param.name:
        settings(ctx).values[param.name] = value
    return value


def _option(*decls: str, envvar: str | None, **kw: Any) -> Callable[[F], F]:
    return click.option(*decls, envvar=envvar, expose_value=False, callback=_store_value,
                        is_eager=False, show_envvar=envvar is not None, **kw)


class _Seconds(click.ParamType):
    """A finite time-out in seconds, 0.1 to a day (FloatRange lets nan and inf through, and
    etcd then times out at once)."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or not 0.1 <= seconds <= 86400:
            self.fail(f"{value!r} is not 0.1 to 86400 seconds", param, ctx)
        return seconds


SECONDS = _Seconds()


def connection_options(with_env: bool = False) -> Callable[[F], F]:
    """The shared options; `with_env` on the top-level group only, so a flag given after the
    command is never overridden by the environment."""

    def env(name: str) -> str | None:
        return f"CLUSTERCTL_{name}" if with_env else None

    opts = [
        _option("--endpoints", envvar=env("ENDPOINTS"), metavar="URLS",
                help=f"etcd endpoints, comma-separated [default: {DEFAULT_ENDPOINT}]"),
        _option("--cacert", envvar=env("CACERT"), metavar="FILE",
                help="verify etcd's certificate with this CA bundle"),
        _option("--cert", envvar=env("CERT"), metavar="FILE",
                help="client certificate for etcd"),
        _option("--key", envvar=env("KEY"), metavar="FILE", help="client key for etcd"),
        _option("--cluster", envvar=env("CLUSTER"), metavar="NAME",
                help="cluster name: keys live under PREFIX/NAME/ [default: default]"),
        _option("--prefix", envvar=env("PREFIX"), metavar="PREFIX",
                help="keyspace prefix [default: /ipsec-cluster]"),
        _option("--config", envvar=env("CONFIG"), metavar="FILE",
                help="take [cluster] and [etcd] from a daemon's TOML configuration"),
        _option("--lab", envvar=env("LAB"), metavar="LAB",
                help="use the etcd of the one-machine lab LAB"),
        _option("--timeout", "timeout_s", envvar=env("TIMEOUT"), type=SECONDS,
                metavar="SECONDS", help="etcd request timeout [default: 2]"),
        _option("-o", "--output", envvar=env("OUTPUT"), type=click.Choice(["table", "json"]),
                help="output format [default: table]"),
    ]

    def decorate(f: F) -> F:
        for opt in reversed(opts):
            f = opt(f)
        return f

    return decorate


@dataclass(frozen=True, slots=True)
class Connection:
    """Where the cluster's keyspace is, resolved from options, environment, lab and config."""

    endpoints: list[str]
    cluster: str
    prefix: str
    cacert: str | None
    cert: str | None
    key: str | None
    timeout_s: float


def _lab_status(lab: str) -> dict[str, Any]:
    """The documented lab contract: `clusterctl lab status --name LAB -o json`."""
    from cluster.lab.errors import LabError
    from cluster.lab.state import check_name
    try:
        check_name(lab)
    except LabError as exc:
        raise click.BadParameter(str(exc), param_hint="'--lab'") from None
    argv = [sys.executable, "-c", "from cluster.cli.main import main; main()",
            "lab", "status", "--name", lab, "-o", "json"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True,
                              timeout=LAB_STATUS_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise CliFailure(f"lab {lab!r}: `clusterctl lab status` did not answer") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        for tag in ("error:", "Error:"):
            last = last.removeprefix(tag).strip()
        raise CliFailure(f"lab {lab!r}: {last}")
    try:
        status = json.loads(done.stdout)
    except ValueError:
        raise CliFailure(f"lab {lab!r}: `clusterctl lab status -o json` printed no JSON") \
            from None
    if not isinstance(status, dict) or not status.get("etcd_endpoints"):
        raise CliFailure(f"lab {lab!r}: its status names no etcd_endpoints")
    return status


def from_lab_status(status: dict[str, Any]) -> dict[str, Any]:
    """Connection settings from `clusterctl lab status -o json`: `etcd_endpoints` (reachable
    from the root namespace), `cluster`, and `key_prefix` = "<prefix>/<cluster>/" (the
    status's own `prefix` names the lab's network namespaces, not keys)."""
    out: dict[str, Any] = {"endpoints": _as_list(status["etcd_endpoints"])}
    if isinstance(status.get("cluster"), str):
        out["cluster"] = status["cluster"]
        key_prefix = status.get("key_prefix")
        suffix = f"/{out['cluster']}/"
        if isinstance(key_prefix, str) and key_prefix.endswith(suffix) \
                and len(key_prefix) > len(suffix):
            out["prefix"] = key_prefix[:-len(suffix)]
    return out


def _as_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def resolve(s: Settings) -> Connection:
    """Apply the precedence: flag/env > lab > config > defaults."""
    base: dict[str, Any] = {"endpoints": [DEFAULT_ENDPOINT], "cluster": "default",
                            "prefix": "/ipsec-cluster", "timeout_s": 2.0}
    if s.get("config"):
        from cluster.config import ConfigError, load_config
        try:
            cfg = load_config(s.get("config"))
        except ConfigError as exc:
            raise CliFailure(str(exc)) from None
        base.update(endpoints=cfg.etcd.endpoints, cacert=cfg.etcd.cacert, cert=cfg.etcd.cert,
                    key=cfg.etcd.key, timeout_s=cfg.etcd.timeout_s, cluster=cfg.cluster.name,
                    prefix=cfg.cluster.prefix)
    if s.get("lab"):
        base.update(from_lab_status(_lab_status(s.get("lab"))))
    for name in ("cacert", "cert", "key", "cluster", "prefix", "timeout_s"):
        if s.get(name) is not None:
            base[name] = s.get(name)
    if s.get("endpoints") is not None:
        base["endpoints"] = _as_list(s.get("endpoints"))
    if not base["endpoints"]:
        raise click.UsageError("--endpoints is empty")
    for url in base["endpoints"]:
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme not in ("http", "https") or not parts.hostname or not port:
            raise click.UsageError(f"bad etcd endpoint {url!r}: expected http(s)://host:port")
    if (base.get("cert") is None) != (base.get("key") is None):
        raise click.UsageError("--cert and --key go together")
    return Connection(base["endpoints"], base["cluster"], base["prefix"], base.get("cacert"),
                      base.get("cert"), base.get("key"), float(base["timeout_s"]))


def connect(ctx: click.Context | None = None) -> Store:
    """The store for this invocation (closed when the command ends)."""
    ctx = ctx or click.get_current_context()
    conn = resolve(settings(ctx))
    store = open_store(conn.endpoints, conn.cluster, conn.prefix, cacert=conn.cacert,
                       cert=conn.cert, key=conn.key, timeout_s=conn.timeout_s)
    ctx.call_on_close(store.close)
    return store
