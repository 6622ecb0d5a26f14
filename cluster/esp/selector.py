"""Traffic selectors (RFC 7296 §3.13.1) as the data plane checks them.

Inbound, the inner source address (and protocol / ports if the selector narrows them) must lie
inside one of the SA's remote selectors: a client may only send from the addresses it
negotiated, typically its virtual IP (RFC 4301 §5.2, "drop spoofed").
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

ANY_PROTOCOL = 0


@dataclass(frozen=True, slots=True)
class TrafficSelector:
    """An address range, optionally narrowed to one IP protocol and a port range."""

    start: ipaddress.IPv4Address | ipaddress.IPv6Address
    end: ipaddress.IPv4Address | ipaddress.IPv6Address
    protocol: int = ANY_PROTOCOL  # 0: any
    start_port: int = 0
    end_port: int = 65535

    @classmethod
    def from_network(cls, network: str, protocol: int = ANY_PROTOCOL,
                     start_port: int = 0, end_port: int = 65535) -> TrafficSelector:
        """A selector covering an address or CIDR network such as "10.99.0.7/32"."""
        net = ipaddress.ip_network(network, strict=False)
        return cls(net.network_address, net.broadcast_address, protocol, start_port, end_port)

    @property
    def version(self) -> int:
        return self.start.version

    @property
    def narrows_ports(self) -> bool:
        return self.start_port != 0 or self.end_port != 65535


def _ports(inner: bytes, version: int, length: int) -> tuple[int, int, int]:
    """(protocol, source port, destination port) of a TCP/UDP/SCTP packet, else protocol only."""
    if version == 4:
        proto = inner[9]
        off = (inner[0] & 0x0F) * 4
    else:
        proto = inner[6]  # extension headers are not walked: they then count as "no ports"
        off = 40
    if proto in (6, 17, 132) and length >= off + 4:
        return proto, int.from_bytes(inner[off:off + 2]), int.from_bytes(inner[off + 2:off + 4])
    return proto, -1, -1


class SelectorSet:
    """The remote selectors of one SA, compiled for a fast per-packet source check.

    Fails closed: an SA without remote selectors accepts no inner packet.
    """

    __slots__ = ("_fast", "_narrow", "only_v4", "selectors")

    def __init__(self, selectors: tuple[TrafficSelector, ...]) -> None:
        self.selectors = selectors
        # packed big-endian addresses of one length compare like the integers they encode
        self._fast = tuple((s.start.packed, s.end.packed) for s in selectors
                           if s.protocol == ANY_PROTOCOL and not s.narrows_ports)
        self._narrow = tuple(s for s in selectors
                             if s.protocol != ANY_PROTOCOL or s.narrows_ports)
        #: (first, last) packed when the set is one IPv4 address range and nothing else: a
        #: hot path may then check `first <= inner[12:16] <= last` for an IPv4 packet itself
        self.only_v4: tuple[bytes, bytes] | None = (
            self._fast[0] if len(selectors) == 1 and len(self._fast) == 1
            and len(self._fast[0][0]) == 4 else None)

    def allows_source(self, inner: bytes, length: int | None = None) -> bool:
        """Whether the inner IP packet `inner` may arrive on this SA (by its source);
        `length`: the packet's length when `inner` goes on beyond it (ESP trailer)."""
        version = inner[0] >> 4
        packed = inner[12:16] if version == 4 else inner[8:24]
        for lo, hi in self._fast:
            if len(lo) == len(packed) and lo <= packed <= hi:
                return True
        if not self._narrow:
            return False
        source = int.from_bytes(packed)
        proto, sport, _ = _ports(inner, version, len(inner) if length is None else length)
        for s in self._narrow:
            if s.version != version or not int(s.start) <= source <= int(s.end):
                continue
            if s.protocol not in (ANY_PROTOCOL, proto):
                continue
            if s.narrows_ports and not s.start_port <= sport <= s.end_port:
                continue
            return True
        return False
