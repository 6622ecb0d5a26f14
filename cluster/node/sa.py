"""A Child SA as a node holds it: the ESP core's `ChildSa` plus where and for whom it runs."""

from __future__ import annotations

import ipaddress

from cluster.esp import ChildSa, IvSource, SaKeys, TrafficSelector
from cluster.node.counters import Traffic
from cluster.node.outbound import host_key, network_key
from cluster.policy import PacketFilter
from cluster.store import ChildSaRecord

Address = tuple[str, int]


class NodeSa(ChildSa):
    """A `ChildSa` with the node's bookkeeping. Touched by the data-path thread only."""

    def __init__(self, record: ChildSaRecord, replay_window: int, iv_source: IvSource,
                 policy: PacketFilter | None = None) -> None:
        super().__init__(
            spi_in=record.spi_in, spi_out=record.spi_out, encr=record.encr, integ=record.integ,
            esn=record.esn,
            keys=SaKeys(record.enc_key_in, record.enc_key_out, record.integ_key_in,
                        record.integ_key_out),
            ts_remote=tuple(TrafficSelector.from_network(n) for n in record.ts_remote),
            replay_window=replay_window, iv_source=iv_source)
        self.record = record
        self.ike_sa_id = record.ike_sa_id
        self.created_at = record.created_at
        #: the client's current address; follows NAT rebinding on authenticated packets only
        self.peer: Address = (record.peer_addr, record.peer_port)
        #: packed addresses whose outbound traffic this SA carries (virtual IP, else ts_remote
        #: host addresses)
        self.client_addresses = client_addresses(record)
        #: outbound sequence numbers at or above this are refused until etcd acknowledges a
        #: newer checkpoint (0: this node does not send on the SA)
        self.send_limit = 0
        self.rebinds = 0
        #: traffic the SA carried before this object counted (other owners, earlier
        #: versions of its record), so that `traffic()` is over the SA's whole life
        self.traffic_base = Traffic()
        #: the traffic policy enforced on the SA's inner packets, both ways (None: none, a
        #: full tunnel); replaced by the control side when policy/<name> changes
        self.policy = policy

    def local_traffic(self) -> Traffic:
        """What this object counted (this node, this version of the record)."""
        return Traffic(self.packets_in, self.packets_out, self.bytes_in, self.bytes_out)

    def traffic(self) -> Traffic:
        """Inner packets and bytes over the SA's life, as far as this node knows."""
        return self.traffic_base + self.local_traffic()


def client_addresses(record: ChildSaRecord) -> tuple[bytes, ...]:
    """Keys (cluster.node.outbound) the node routes to this SA: the virtual IPs (IPv4 and
    IPv6, whichever the client has), or, when the client has none, its remote selectors —
    hosts, and subnets (a site behind the client; found by longest prefix). A /0 selector
    is never routed: it would take the node's default route."""
    vips = tuple(host_key(ip) for ip in (record.virtual_ip, record.virtual_ip6) if ip)
    if vips:
        return vips
    out = []
    for n in record.ts_remote:
        if ipaddress.ip_network(n, strict=False).prefixlen == 0:
            continue
        out.append(network_key(n))
    return tuple(out)
