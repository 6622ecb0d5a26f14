"""Small Prometheus helpers shared by the daemons.

The store's counters (malformed records skipped, watch resyncs and reconnects) live in
prometheus_client's default REGISTRY. A daemon that keeps its own registry exposes both with
`serve_metrics(listen, own_registry)`: one /metrics with the union.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector


class MetricsError(ValueError):
    """A bad [metrics] listen value."""


def parse_listen(listen: str) -> tuple[str, int] | None:
    """`host:port` (IPv6 as `[::1]:9410`) → (host, port); "" → None (disabled)."""
    if not listen:
        return None
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise MetricsError(f"[metrics] listen must be host:port or \"\", not {listen!r}")
    return host.strip("[]"), int(port)


class _Union(Collector):
    def __init__(self, registries: tuple[CollectorRegistry, ...]) -> None:
        self.registries = registries

    def collect(self) -> Iterator[Metric]:
        for r in self.registries:
            yield from r.collect()


def union_registry(*registries: CollectorRegistry) -> CollectorRegistry:
    """One registry exposing the default REGISTRY (store counters) plus `registries`."""
    union = CollectorRegistry(auto_describe=False)
    union.register(_Union((REGISTRY, *[r for r in registries if r is not REGISTRY])))
    return union


def serve_metrics(listen: str, *registries: CollectorRegistry) -> tuple[str, int] | None:
    """Expose /metrics on `listen` (a daemon thread); returns the address, None if disabled.
    OSError (address in use, ...) is re-raised as MetricsError with the address."""
    addr = parse_listen(listen)
    if addr is None:
        return None
    try:
        start_http_server(addr[1], addr[0], registry=union_registry(*registries))
    except OSError as exc:
        raise MetricsError(f"cannot serve metrics on {listen}: {exc.strerror}") from None
    return addr
