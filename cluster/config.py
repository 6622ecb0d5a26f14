"""The TOML configuration every daemon reads (docs/configuration.md).

`load_config(path, section)` returns the common sections as typed dataclasses and the
daemon's own section as a `Section` with typed accessors. Every problem is a ConfigError
with a one-line message naming the file and the key.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_MISSING: Any = object()


class ConfigError(Exception):
    """The configuration file is missing, unreadable, not TOML, or has a bad value."""


@dataclass(frozen=True, slots=True)
class ClusterSection:
    name: str = "default"
    prefix: str = "/ipsec-cluster"
    data_key_file: str | None = None


@dataclass(frozen=True, slots=True)
class EtcdSection:
    endpoints: list[str] = field(default_factory=lambda: ["http://127.0.0.1:2379"])
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    timeout_s: float = 2.0


@dataclass(frozen=True, slots=True)
class LogSection:
    level: str = "info"
    json: bool = False


@dataclass(frozen=True, slots=True)
class MetricsSection:
    listen: str = "127.0.0.1:9410"   # "" disables


class Section:
    """A daemon's own section ([keyd], [node], ...) with typed, checked accessors."""

    def __init__(self, source: str, name: str, data: Mapping[str, Any]) -> None:
        self.source = source
        self.name = name
        self.data = dict(data)

    def _where(self, key: str) -> str:
        return f"{self.source}: [{self.name}] {key}"

    def get(self, key: str, kind: type[T], default: T = _MISSING) -> T:
        """The value of `key`, which must be of type `kind` (int accepted for float)."""
        if key not in self.data:
            if default is _MISSING:
                raise ConfigError(f"{self._where(key)} is required")
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if (kind is not bool and isinstance(value, bool)) or not isinstance(value, kind):
            raise ConfigError(
                f"{self._where(key)} must be {kind.__name__}, not {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            # TOML has nan and inf; no time-out, interval or rate means either
            raise ConfigError(f"{self._where(key)} must be a finite number, not {value}")
        return value

    def str_list(self, key: str, default: list[str] | None = None) -> list[str]:
        value = self.get(key, list, default if default is not None else _MISSING)
        if not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{self._where(key)} must be a list of strings")
        return list(value)

    def path(self, key: str, default: str | None = _MISSING) -> str | None:
        """An absolute path (docs/configuration.md: paths are absolute)."""
        if key not in self.data and default is not _MISSING:
            return default
        value = self.get(key, str)
        if not value.startswith("/"):
            raise ConfigError(f"{self._where(key)} must be an absolute path: {value!r}")
        return value


@dataclass(frozen=True, slots=True)
class Config:
    source: str
    cluster: ClusterSection
    etcd: EtcdSection
    log: LogSection
    metrics: MetricsSection
    raw: Mapping[str, Any]

    def section(self, name: str) -> Section:
        """A daemon's own section; an empty one if the file has none."""
        data = self.raw.get(name, {})
        if not isinstance(data, dict):
            raise ConfigError(f"{self.source}: [{name}] must be a table")
        return Section(self.source, name, data)


_LEVELS = ("debug", "info", "warning", "error")


def _common(source: str, raw: Mapping[str, Any]) -> Config:
    c = Section(source, "cluster", raw.get("cluster", {}))
    e = Section(source, "etcd", raw.get("etcd", {}))
    lg = Section(source, "log", raw.get("log", {}))
    m = Section(source, "metrics", raw.get("metrics", {}))
    cluster = ClusterSection(c.get("name", str, "default"), c.get("prefix", str, "/ipsec-cluster"),
                             c.path("data_key_file", None))
    endpoints = e.str_list("endpoints", ["http://127.0.0.1:2379"])
    if not endpoints:
        raise ConfigError(f"{source}: [etcd] endpoints must not be empty")
    etcd = EtcdSection(endpoints, e.path("cacert", None), e.path("cert", None),
                       e.path("key", None), e.get("timeout_s", float, 2.0))
    if (etcd.cert is None) != (etcd.key is None):
        raise ConfigError(f"{source}: [etcd] cert and key go together")
    if etcd.timeout_s <= 0:
        raise ConfigError(f"{source}: [etcd] timeout_s must be > 0")
    level = lg.get("level", str, "info").lower()
    if level not in _LEVELS:
        raise ConfigError(f"{source}: [log] level must be one of {', '.join(_LEVELS)}")
    return Config(source, cluster, etcd, LogSection(level, lg.get("json", bool, False)),
                  MetricsSection(m.get("listen", str, "127.0.0.1:9410")), raw)


def parse_config(text: str, source: str = "<string>") -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    for name in ("cluster", "etcd", "log", "metrics"):
        if name in raw and not isinstance(raw[name], dict):
            raise ConfigError(f"{source}: [{name}] must be a table")
    return _common(source, raw)


def load_config(path: str | Path) -> Config:
    """Read and check a daemon's TOML file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {p}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config {p} is not UTF-8 text") from None
    return parse_config(text, str(p))
