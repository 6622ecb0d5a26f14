"""The node's Prometheus metrics, in a registry of their own, read at scrape time.

The data path counts with plain integers (a Prometheus counter per packet would cost more
than the decryption); `NodeCollector` turns a `Snapshot` of them into metric families when
Prometheus scrapes. Names are prefixed `ipsec_cluster_node_`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server

from cluster.esp import DropReason

P = "ipsec_cluster_node_"


@dataclass(slots=True)
class Snapshot:
    packets_in: int = 0
    bytes_in: int = 0
    packets_out: int = 0
    bytes_out: int = 0
    drops: dict[str, int] = field(default_factory=dict)  # by DropReason value
    sas_installed: int = 0
    sas_owned: int = 0
    checkpoint_lag_packets: int = 0  # largest lag of an owned SA behind its acked checkpoint
    checkpoint_lag_seconds: float = 0.0  # age of the oldest unacknowledged counter change
    checkpoints_written: int = 0
    checkpoint_failures: int = 0
    checkpoints_queued: int = 0
    sa_fetches: int = 0  # on-demand sa/<spi> reads for unknown SPIs
    sa_fetches_shed: int = 0  # unknown SPIs not read: over the read rate or reads in flight
    rebinds: int = 0
    coalesced: int = 0  # UDP/4500 datagrams received several per call (GRO)
    ike_relayed: int = 0
    health_probes: int = 0
    takeovers_exact: int = 0
    takeovers_jump: int = 0
    fenced: int = 0
    lease_ok: int = 1
    draining: int = 0
    removed: int = 0  # 1 once `clusterctl node remove` took this node out (until restarted)
    finals_without_ready: int = 0  # final records written without the new owner's READY
    #: packets traffic policies refused, by (policy, reason, direction)
    policy_drops: dict[tuple[str, str, str], int] = field(default_factory=dict)
    policies_failing_closed: int = 0  # bound policies missing or malformed: all dropped


class NodeCollector:
    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self._snapshot()
        packets = CounterMetricFamily(P + "packets", "ESP packets carried", labels=["direction"])
        packets.add_metric(["in"], s.packets_in)
        packets.add_metric(["out"], s.packets_out)
        yield packets
        octets = CounterMetricFamily(P + "bytes", "Inner bytes carried", labels=["direction"])
        octets.add_metric(["in"], s.bytes_in)
        octets.add_metric(["out"], s.bytes_out)
        yield octets
        drops = CounterMetricFamily(P + "drops", "Packets dropped, by reason", labels=["reason"])
        for reason in DropReason:
            drops.add_metric([reason.value], s.drops.get(reason.value, 0))
        yield drops
        policy = CounterMetricFamily(P + "policy_drops", "Packets a traffic policy refused, "
                                     "by policy, reason and direction (in: from the client)",
                                     labels=["policy", "reason", "direction"])
        for labels, n in sorted(s.policy_drops.items()):
            policy.add_metric(list(labels), n)
        yield policy
        yield GaugeMetricFamily(P + "policies_failing_closed",
                                "Policies SAs are bound to that are missing or malformed "
                                "(their traffic is all dropped)",
                                value=s.policies_failing_closed)
        yield GaugeMetricFamily(P + "sas_installed", "Child SAs held", value=s.sas_installed)
        yield GaugeMetricFamily(P + "sas_owned", "Child SAs this node sends on",
                                value=s.sas_owned)
        yield GaugeMetricFamily(P + "checkpoint_lag_packets",
                                "Largest packet lag of an owned SA behind its checkpoint",
                                value=s.checkpoint_lag_packets)
        yield GaugeMetricFamily(P + "checkpoint_lag_seconds",
                                "Age of the oldest acknowledged checkpoint of an owned SA that "
                                "has moved since", value=s.checkpoint_lag_seconds)
        for name, doc, value in (
            ("checkpoints_written", "Checkpoint records etcd applied", s.checkpoints_written),
            ("checkpoint_failures", "Checkpoint batches that failed (retried)",
             s.checkpoint_failures),
            ("sa_fetches", "On-demand reads of sa/<spi> for unknown SPIs", s.sa_fetches),
            ("sa_fetches_shed", "Unknown SPIs not read from etcd: over the on-demand read "
             "rate, or with reads in flight (a flood of made-up SPIs)", s.sa_fetches_shed),
            ("rebinds", "Client address changes followed (NAT rebinding)", s.rebinds),
            ("udp_coalesced", "UDP/4500 datagrams received several per system call (GRO)",
             s.coalesced),
            ("ike_relayed", "Stray IKE datagrams relayed to keyd", s.ike_relayed),
            ("health_probes", "Health probes answered", s.health_probes),
            ("fences", "Clients this node stopped sending for", s.fenced),
            ("finals_without_ready", "Hand-offs away whose final record was written without "
             "the new owner's READY", s.finals_without_ready),
        ):
            yield CounterMetricFamily(P + name, doc, value=value)
        takeovers = CounterMetricFamily(P + "takeovers", "SAs taken over, by how",
                                        labels=["how"])
        takeovers.add_metric(["exact"], s.takeovers_exact)
        takeovers.add_metric(["jump"], s.takeovers_jump)
        yield takeovers
        yield GaugeMetricFamily(P + "checkpoints_queued", "Checkpoints waiting for etcd",
                                value=s.checkpoints_queued)
        yield GaugeMetricFamily(P + "lease_ok", "1 while the node's lease is confirmed",
                                value=s.lease_ok)
        yield GaugeMetricFamily(P + "draining", "1 while the node is draining",
                                value=s.draining)
        yield GaugeMetricFamily(P + "removed", "1 once the node's record was removed while it "
                                "ran (it stays out until restarted)", value=s.removed)


def serve_metrics(listen: str, snapshot: Callable[[], Snapshot]) -> CollectorRegistry | None:
    """Expose the node's metrics on `listen` ("host:port"; "" disables)."""
    if not listen:
        return None
    host, _, port = listen.rpartition(":")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(snapshot))
    start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=registry)
    return registry
