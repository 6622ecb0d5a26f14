"""Traffic selectors (RFC 7296 §2.9): narrowing the peer's proposal to what we allow, and
conversion between selectors and CIDRs."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence

from .constants import TsType
from .payloads import TrafficSelector

IpNet = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=4096)
def selector_for(cidr: str, ip_protocol: int = 0) -> TrafficSelector:
    """The selector of a CIDR (immutable: made once per CIDR)."""
    net = ipaddress.ip_network(cidr, strict=False)
    ts_type = TsType.IPV4_ADDR_RANGE if net.version == 4 else TsType.IPV6_ADDR_RANGE
    return TrafficSelector(ts_type, ip_protocol, 0, 65535, net.network_address.packed,
                           net.broadcast_address.packed)


def _range(ts: TrafficSelector) -> tuple[int, int, int]:
    version = 4 if ts.ts_type == TsType.IPV4_ADDR_RANGE else 6
    return version, int.from_bytes(ts.start_addr, "big"), int.from_bytes(ts.end_addr, "big")


def intersect(a: TrafficSelector, b: TrafficSelector) -> TrafficSelector | None:
    """The selector both allow, or None."""
    if a.ts_type != b.ts_type:
        return None
    if a.ip_protocol and b.ip_protocol and a.ip_protocol != b.ip_protocol:
        return None
    _, a0, a1 = _range(a)
    _, b0, b1 = _range(b)
    lo, hi = max(a0, b0), min(a1, b1)
    plo, phi = max(a.start_port, b.start_port), min(a.end_port, b.end_port)
    if lo > hi or plo > phi:
        return None
    n = len(a.start_addr)
    return TrafficSelector(a.ts_type, a.ip_protocol or b.ip_protocol, plo, phi,
                           lo.to_bytes(n, "big"), hi.to_bytes(n, "big"))


def narrow(
    proposed: Sequence[TrafficSelector], allowed: Iterable[TrafficSelector]
) -> tuple[TrafficSelector, ...]:
    """§2.9: the responder answers with a subset of what the initiator proposed."""
    allowed = list(allowed)
    out: list[TrafficSelector] = []
    for p in proposed:
        for a in allowed:
            ts = intersect(p, a)
            if ts is not None and ts not in out:
                out.append(ts)
    return tuple(out)


def to_cidrs(selectors: Iterable[TrafficSelector]) -> tuple[str, ...]:
    """CIDRs covering the selectors' address ranges (ports and protocols are not kept)."""
    out: list[str] = []
    for ts in selectors:
        for cidr in _cidrs_of(ts.start_addr, ts.end_addr):
            if cidr not in out:
                out.append(cidr)
    return tuple(out)


@functools.lru_cache(maxsize=4096)
def _cidrs_of(start: bytes, end: bytes) -> tuple[str, ...]:
    """The CIDRs of one address range (the protected networks come back in every
    negotiation: summarised once each)."""
    if len(start) not in (4, 16) or len(end) != len(start) or start > end:
        return ()
    first = ipaddress.ip_address(start)
    if start == end:   # one address (a client's virtual IP)
        return (f"{first}/{8 * len(start)}",)
    last = ipaddress.ip_address(end)
    return tuple(str(net) for net in ipaddress.summarize_address_range(first, last))
