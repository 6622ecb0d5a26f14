"""A traffic policy compiled for the data plane: one verdict per inner packet (sans-I/O).

The decision (docs/operator-guide.md, "Traffic policy"):

1. Of all rules that match the packet — the policy's `denied` and `allowed`, and for `guest`
   the built-in internal ranges (`GUEST_INTERNAL`, as denied) — the narrowest decides
   (`Rule.specificity`: longer prefix, then a named protocol, then ports); on a tie a
   denying rule wins.
2. No rule matches: `full` and `guest` forward, `split` drops.

IPv6 and `guest`: a guest policy forwards IPv6 only when one of its rules names an IPv6
network. A site's internal IPv6 networks are seldom in the private ranges the built-in
internal list knows (they are global prefixes), so a guest policy written with IPv4 rules
only would otherwise open every IPv6 address of the site to guests; such a policy drops
IPv6 both ways (`no_ipv6`). `split` needs no such rule (it forwards only what it allows), and
`full` forwards IPv6 as it forwards IPv4.

Inbound (from the client) a rule matches the packet's destination address, protocol and
destination port; outbound (to the client) its source address, protocol and source port — the
same rules, stateless, so that answers from what a client may reach come back and nothing
else that the policy forbids reaches it. A packet without ports (ICMP, a non-first fragment)
never matches a rule that names ports.

Verdicts of IPv4 packets (without options, not later fragments) are cached per flow: a flow
costs one slice and one dictionary lookup per packet after its first; so are IPv6 packets
without extension headers. A filter is immutable; a policy change builds a new one.
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum

from cluster.policy.rules import PORT_PROTOCOLS, Mode, Rule, parse_rules

CACHE_ENTRIES = 16384  # per direction, protocol and policy; cleared when full (a scan
#                        cannot grow it)

#: what `guest` never forwards unless an allowed rule narrower than the range says so:
#: "this network", RFC 1918, shared address space (RFC 6598), loopback, link-local,
#: multicast, reserved; IPv6 unspecified, loopback, unique local (RFC 4193), link-local,
#: multicast. The documentation ranges are not in it: they stand for the internet in the lab.
GUEST_INTERNAL: tuple[str, ...] = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.168.0.0/16", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "::1/128", "fc00::/7", "fe80::/10", "ff00::/8",
)


class DropVerdict(StrEnum):
    """Why a policy dropped a packet; the `reason` label of the node's policy drop counter."""

    DENIED = "denied"  # a denied rule decided
    INTERNAL = "internal"  # guest: a built-in internal range decided
    NOT_ALLOWED = "not_allowed"  # split: no allowed rule matched
    UNRESOLVED = "unresolved"  # the SA's policy is missing or malformed: fail closed
    MALFORMED = "malformed"  # not an IP packet the filter can read
    NO_IPV6 = "no_ipv6"  # guest: IPv6, and the policy names no IPv6 network


# (version 0 = both, first, last packed address or None, protocol -1 = any, port ranges,
#  verdict: None forwards)
_Entry = tuple[int, bytes | None, bytes | None, int, tuple[tuple[int, int], ...],
               DropVerdict | None]


def _entry(rule: Rule, verdict: DropVerdict | None) -> _Entry:
    net = rule.network
    return (net.version if net is not None else 0,
            net.network_address.packed if net is not None else None,
            net.broadcast_address.packed if net is not None else None,
            rule.protocol if rule.protocol is not None else -1, rule.ports, verdict)


_INTERNAL_RULES = tuple(Rule(ipaddress.ip_network(n)) for n in GUEST_INTERNAL)
_IPV6_EXTENSIONS = frozenset((0, 43, 60))  # hop-by-hop, routing, destination options
_MAX_EXTENSIONS = 8
_IPV6_WALKED = _IPV6_EXTENSIONS | {44, 51}  # and fragment, AH: not cached


def _flow(pkt: bytes, outbound: bool) -> tuple[int, bytes, int, int] | None:
    """(IP version, the remote side's address, protocol, its port or -1) of an inner packet:
    the destination inbound, the source outbound. None if it cannot be read."""
    n = len(pkt)
    version = pkt[0] >> 4 if n else 0
    if version == 4:
        if n < 20:
            return None
        off = (pkt[0] & 0x0F) * 4
        proto = pkt[9]
        first_fragment = not ((pkt[6] & 0x1F) or pkt[7])
        addr = pkt[12:16] if outbound else pkt[16:20]
    elif version == 6:
        if n < 40:
            return None
        proto = pkt[6]
        off = 40
        first_fragment = True
        for _ in range(_MAX_EXTENSIONS):  # RFC 8200 §4: walk to the upper-layer header
            if off + 8 > n:
                break
            if proto == 44:  # fragment header: ports only in the first fragment
                first_fragment = first_fragment and not (
                    ((pkt[off + 2] << 8) | pkt[off + 3]) >> 3)
                proto = pkt[off]
                off += 8
            elif proto == 51:  # AH (RFC 4302 §2.2): length in 4-byte units, minus 2
                proto, off = pkt[off], off + (pkt[off + 1] + 2) * 4
            elif proto in _IPV6_EXTENSIONS:
                proto, off = pkt[off], off + (pkt[off + 1] + 1) * 8
            else:
                break
        addr = pkt[8:24] if outbound else pkt[24:40]
    else:
        return None
    port = -1
    if proto in PORT_PROTOCOLS and first_fragment and off + 4 <= n:
        port = (pkt[off] << 8) | pkt[off + 1] if outbound else (pkt[off + 2] << 8) | pkt[off + 3]
    return version, addr, proto, port


class PacketFilter:
    """One policy, compiled. `verdict_in` / `verdict_out` return None to forward a packet,
    else why it is dropped. Used by the data-path thread only (the caches are not locked)."""

    __slots__ = ("_cache_in", "_cache_out", "_default", "_entries", "mode", "name")

    def __init__(self, name: str, mode: Mode | None, entries: tuple[_Entry, ...],
                 default: DropVerdict | None) -> None:
        self.name = name
        self.mode = mode
        self._entries = entries
        self._default = default
        # verdicts by protocol, then by the packet's bytes that decide (IPv4 inbound: the
        # destination and ports, 16:24; outbound: source, destination and ports, 12:24;
        # without ports the address alone; IPv6 alike): one slice, one lookup
        self._cache_in: list[dict[bytes, DropVerdict | None] | None] = [None] * 256
        self._cache_out: list[dict[bytes, DropVerdict | None] | None] = [None] * 256

    def verdict_in(self, pkt: bytes) -> DropVerdict | None:
        """A packet from the client (by its destination)."""
        # IPv4 without options, not a later fragment: the common case, cached
        if len(pkt) >= 24 and pkt[0] == 0x45 and not (pkt[6] & 0x1F or pkt[7]):
            proto = pkt[9]
            ported = proto in PORT_PROTOCOLS
            key = pkt[16:24] if ported else pkt[16:20]
            cache = self._cache_in[proto]
            if cache is None:
                cache = self._cache_in[proto] = {}
            else:
                try:
                    return cache[key]
                except KeyError:
                    pass
            verdict = self._decide(4, pkt[16:20], proto, (pkt[22] << 8) | pkt[23]
                                   if ported else -1)
            if len(cache) >= CACHE_ENTRIES:
                cache.clear()
            cache[key] = verdict
            return verdict
        return self._uncached(pkt, False)

    def verdict_out(self, pkt: bytes) -> DropVerdict | None:
        """A packet to the client (by its source)."""
        # verdict_in's fast path with the source's offsets: written out twice on purpose, a
        # shared helper costs a call more per packet on the hot path
        if len(pkt) >= 24 and pkt[0] == 0x45 and not (pkt[6] & 0x1F or pkt[7]):
            proto = pkt[9]
            ported = proto in PORT_PROTOCOLS
            key = pkt[12:24] if ported else pkt[12:16]
            cache = self._cache_out[proto]
            if cache is None:
                cache = self._cache_out[proto] = {}
            else:
                try:
                    return cache[key]
                except KeyError:
                    pass
            verdict = self._decide(4, pkt[12:16], proto, (pkt[20] << 8) | pkt[21]
                                   if ported else -1)
            if len(cache) >= CACHE_ENTRIES:
                cache.clear()
            cache[key] = verdict
            return verdict
        return self._uncached(pkt, True)

    def _uncached(self, pkt: bytes, outbound: bool) -> DropVerdict | None:
        """Off the IPv4 fast path. IPv6 without extension headers is cached like IPv4 (by
        the address, and the ports for TCP/UDP/SCTP); the rest (IPv4 options or fragments,
        IPv6 extension headers, anything odd) is read and decided each time."""
        if len(pkt) >= 44 and pkt[0] >> 4 == 6 and pkt[6] not in _IPV6_WALKED:
            proto = pkt[6]
            ported = proto in PORT_PROTOCOLS
            if outbound:
                key = pkt[8:44] if ported else pkt[8:24]
                caches = self._cache_out
            else:
                key = pkt[24:44] if ported else pkt[24:40]
                caches = self._cache_in
            cache = caches[proto]
            if cache is None:
                cache = caches[proto] = {}
            else:
                try:
                    return cache[key]
                except KeyError:
                    pass
            port = -1
            if ported:
                port = (pkt[40] << 8) | pkt[41] if outbound else (pkt[42] << 8) | pkt[43]
            verdict = self._decide(6, pkt[8:24] if outbound else pkt[24:40], proto, port)
            if len(cache) >= CACHE_ENTRIES:
                cache.clear()
            cache[key] = verdict
            return verdict
        flow = _flow(pkt, outbound)
        if flow is None:
            return DropVerdict.MALFORMED
        return self._decide(*flow)

    def _decide(self, version: int, addr: bytes, proto: int, port: int) -> DropVerdict | None:
        for v, lo, hi, p, ports, verdict in self._entries:
            if v and v != version:
                continue
            if lo is not None and not lo <= addr <= hi:  # type: ignore[operator]
                continue
            if p >= 0 and p != proto:
                continue
            if ports and not any(a <= port <= b for a, b in ports):
                continue  # a packet without ports (port -1) matches no port rule
            return verdict
        return self._default


def compile_rules(name: str, mode: Mode, allowed: tuple[Rule, ...],
                  denied: tuple[Rule, ...]) -> PacketFilter:
    """The filter of a policy whose rules are parsed already."""
    ranked: list[tuple[tuple[int, bool, bool], int, _Entry]] = []
    for rule in denied:
        ranked.append((rule.specificity, 0, _entry(rule, DropVerdict.DENIED)))
    if mode == "guest":
        for rule in _INTERNAL_RULES:
            ranked.append((rule.specificity, 1, _entry(rule, DropVerdict.INTERNAL)))
    for rule in allowed:
        ranked.append((rule.specificity, 2, _entry(rule, None)))
    # narrowest first; on a tie denied, then internal, then allowed (a stable sort keeps the
    # operator's order among equals, which then decide alike)
    ranked.sort(key=lambda r: (tuple(-int(x) for x in r[0]), r[1]))
    default = DropVerdict.NOT_ALLOWED if mode == "split" else None
    entries = tuple(e for _, _, e in ranked)
    if mode == "guest" and not names_ipv6(allowed + denied):
        entries = ((6, None, None, -1, (), DropVerdict.NO_IPV6), *entries)
    return PacketFilter(name, mode, entries, default)


def names_ipv6(rules: tuple[Rule, ...]) -> bool:
    """Whether a rule names an IPv6 network (`any` addresses name neither family)."""
    return any(r.network is not None and r.network.version == 6 for r in rules)


def compile_policy(name: str, mode: Mode, allowed: list[str],
                   denied: list[str]) -> PacketFilter:
    """The filter of a policy given as rule texts; PolicyError if a rule is not valid."""
    return compile_rules(name, mode, parse_rules(allowed, "allowed"),
                         parse_rules(denied, "denied"))


def fail_closed(name: str) -> PacketFilter:
    """The filter of an SA whose policy `name` cannot be used: drops everything, both ways."""
    return PacketFilter(name, None, (), DropVerdict.UNRESOLVED)
