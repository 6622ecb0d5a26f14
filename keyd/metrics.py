"""keyd's Prometheus metrics, in a registry of their own (two instances can share a process).

Names are prefixed `keyd_`. What the IKE core counts itself (exchanges, errors by notify type,
retransmits, cookies) is mirrored from the core's counters object by `sync_core_counters`;
what only the shell sees (datagrams dropped at the socket, etcd writes) is counted here.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import start_http_server


class KeydMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.handshakes = Counter(
            "keyd_handshakes", "IKE SA establishments by result (established, failed, "
            "not_persisted)", ["result"], registry=r)
        self.auth_failures = Counter(
            "keyd_auth_failures", "IKE_AUTH requests refused with AUTHENTICATION_FAILED, by "
            "cause (no_matching_connection, unknown_identity, psk_mismatch, "
            "certificate_invalid, eap_unavailable, malformed_request)", ["reason"],
            registry=r)
        self.secrets_reloads = Counter(
            "keyd_secrets_reloads", "Reads of the secrets file on SIGHUP, by result (ok, "
            "failed: the secrets in use were kept)", ["result"], registry=r)
        self.exchanges = Counter(
            "keyd_exchanges", "IKE requests handled, by exchange type", ["type"], registry=r)
        self.retransmits = Counter(
            "keyd_retransmits", "Retransmitted requests answered from the response cache",
            registry=r)
        self.retransmits_sent = Counter(
            "keyd_retransmits_sent", "keyd's own requests sent again", registry=r)
        self.core_drops = Counter(
            "keyd_messages_dropped", "IKE messages the core dropped silently, by reason",
            ["reason"], registry=r)
        self.half_open = Gauge(
            "keyd_half_open_ike_sas", "IKE SAs between IKE_SA_INIT and IKE_AUTH", registry=r)
        self.fragments_incomplete = Gauge(
            "keyd_ike_fragments_incomplete", "Fragmented IKE messages (RFC 7383) being "
            "reassembled", registry=r)
        self.cookies_sent = Counter(
            "keyd_cookies_sent", "COOKIE notifies sent while half-open SAs were above "
            "the threshold", registry=r)
        self.errors = Counter(
            "keyd_errors", "Protocol errors answered or dropped, by notify type",
            ["notify"], registry=r)
        self.eap_failures = Counter(
            "keyd_eap_failures", "EAP conversations that failed, by reason (unknown user, "
            "bad password, radius reject, radius timeout, bad auth, ...)", ["reason"],
            registry=r)
        self.dropped = Counter(
            "keyd_datagrams_dropped", "Datagrams dropped by the shell, by reason", ["reason"],
            registry=r)
        self.datagrams_in = Counter(
            "keyd_datagrams_received", "Datagrams received, by port", ["port"], registry=r)
        self.datagrams_out = Counter(
            "keyd_datagrams_sent", "Datagrams sent, by port", ["port"], registry=r)
        self.etcd_write_seconds = Histogram(
            "keyd_etcd_write_seconds", "Latency of etcd writes made before a reply, by record",
            ["record"], registry=r,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        self.step_seconds = Histogram(
            "keyd_step_seconds", "Time from a request's arrival at the worker to its reply "
            "being released (core + etcd), by exchange", ["exchange"], registry=r,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self.commit_steps = Histogram(
            "keyd_commit_steps", "Steps made durable together by one group commit",
            registry=r, buckets=(1, 2, 4, 8, 16, 32, 64))
        self.etcd_available = Gauge(
            "keyd_etcd_available", "1 while etcd takes keyd's writes, 0 while it does not",
            registry=r)
        self.etcd_outages = Counter(
            "keyd_etcd_outages", "Times etcd became unreachable for keyd", registry=r)
        self.not_persisted = Counter(
            "keyd_replies_withheld", "Replies not sent because their state could not be "
            "written to etcd", registry=r)
        self.refused = Counter(
            "keyd_ike_sa_init_refused", "New IKE_SA_INIT requests refused at once with "
            "TEMPORARY_FAILURE, by reason (etcd_unavailable: etcd has not taken writes for "
            "a while)", ["reason"], registry=r)
        self.imported = Counter(
            "keyd_ike_sas_imported", "IKE SAs continued from etcd (written by another "
            "instance or an earlier run)", registry=r)
        self.ike_sas = Gauge("keyd_ike_sas", "IKE SAs held in memory", registry=r)
        self.pool_exhausted = Counter(
            "keyd_pool_exhausted", "Address requests the pool could not serve", registry=r)
        self.swept = Counter(
            "keyd_ike_sas_swept", "Expired IKE SAs removed from etcd by the sweeper",
            registry=r)
        self.etcd_available.set(1)
        self._core_seen: dict[tuple[str, str], float] = {}
        self._children: dict[tuple[int, str], Any] = {}

    def child(self, metric: Any, label: str) -> Any:
        """`metric.labels(label)`, looked up once per label (labels() is slow)."""
        key = (id(metric), label)
        got = self._children.get(key)
        if got is None:
            got = self._children[key] = metric.labels(label)
        return got

    @contextlib.contextmanager
    def etcd_write(self, record: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.child(self.etcd_write_seconds, record).observe(time.perf_counter() - start)

    def sync_core_counters(self, counters: Any) -> None:
        """Mirror the core's monotonic counters (keyd.ike's IkeCounters): only the increase
        since the last call is added, so the core keeps plain integers."""
        for name, metric in (("exchanges", self.exchanges), ("errors", self.errors),
                             ("drops", self.core_drops),
                             ("eap_failures", self.eap_failures),
                             ("auth_failures", self.auth_failures)):
            by_label: Mapping[str, int] = getattr(counters, name, None) or {}
            for label, value in by_label.items():
                if self._core_seen.get((name, label)) != value:
                    self._add(self.child(metric, str(label)), (name, label), value)
        for label, value in (getattr(counters, "handshakes", None) or {}).items():
            if self._core_seen.get(("handshakes", label)) != value:
                result = {"ok": "established"}.get(str(label), str(label))
                self._add(self.child(self.handshakes, result), ("handshakes", label), value)
        for name, metric in (("retransmits_answered", self.retransmits),
                             ("retransmits_sent", self.retransmits_sent),
                             ("cookies_sent", self.cookies_sent)):
            self._add(metric, (name, ""), getattr(counters, name, 0))
        self.half_open.set(getattr(counters, "half_open", 0))
        self.fragments_incomplete.set(getattr(counters, "fragments_incomplete", 0))

    def _add(self, metric: Any, key: tuple[str, str], value: Any) -> None:
        try:
            total = float(value)
        except (TypeError, ValueError):
            return
        delta = total - self._core_seen.get(key, 0.0)
        if delta > 0:
            metric.inc(delta)
            self._core_seen[key] = total

    def value(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        """A sample's current value (0 when absent): for tests and `keyd --status`."""
        got = self.registry.get_sample_value(name, dict(labels or {}))
        return float(got or 0.0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, host: str, port: int) -> None:
        """Expose /metrics over HTTP on host:port (a daemon thread)."""
        start_http_server(port, addr=host, registry=self.registry)
