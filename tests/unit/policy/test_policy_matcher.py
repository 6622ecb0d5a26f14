"""The policy matcher, driven directly: rule syntax, the decision, both directions."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.policy import (
    DropVerdict,
    PolicyError,
    compile_policy,
    fail_closed,
    format_rule,
    parse_rule,
)
from cluster.policy.matcher import CACHE_ENTRIES

CLIENT = "10.99.0.2"


def ipv4(src: str, dst: str, proto: int, sport: int = 0, dport: int = 0,
         frag_offset: int = 0, payload: bytes = b"") -> bytes:
    l4 = struct.pack("!HH", sport, dport) + b"\0" * 4 if proto in (6, 17, 132) else b"\x08\0\0\0"
    body = l4 + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 1, frag_offset, 64, proto,
                         0, ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed)
    return header + body


def ipv6(src: str, dst: str, proto: int, sport: int = 0, dport: int = 0,
         extensions: bytes = b"", first_header: int | None = None) -> bytes:
    l4 = struct.pack("!HH", sport, dport) + b"\0" * 4 if proto in (6, 17, 132) else b"\x80\0\0\0"
    body = extensions + l4
    return (struct.pack("!IHBB", 6 << 28, len(body),
                        proto if first_header is None else first_header, 64)
            + ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed + body)


# --- syntax ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, canonical", [
    ("10.20.0.0/16", "10.20.0.0/16"),
    ("10.20.0.80/32 tcp/80,443", "10.20.0.80/32 tcp/80,443"),
    ("udp/53", "udp/53"),
    ("any udp/53", "udp/53"),
    ("10.20.0.1/16", "10.20.0.0/16"),
    ("10.20.0.7", "10.20.0.7/32"),
    ("2001:db8::/32 TCP/443", "2001:db8::/32 tcp/443"),
    ("tcp/8000-8999,22,22", "tcp/22,8000-8999"),
    ("icmp", "icmp"),
    ("47", "gre"),
    ("any", "any"),
    ("  10.0.0.0/8   sctp/9  ", "10.0.0.0/8 sctp/9"),
])
def test_rule_syntax(text: str, canonical: str) -> None:
    rule = parse_rule(text)
    assert format_rule(rule) == canonical
    assert parse_rule(format_rule(rule)) == rule


@pytest.mark.parametrize("text", [
    "", "   ", "10.0.0.0/33", "10.0.0.300", "tcp/65536", "tcp/-1", "tcp/80-20", "tcp/",
    "tcp/80,", "icmp/8", "gre/1", "0", "256", "bogus", "tcp/80 10.0.0.0/8",
    "10.0.0.0/8 tcp/80 udp/53", "10.0.0.0/8 10.1.0.0/16", "2001:db8::/32 icmp",
    "10.0.0.0/8 icmpv6",
])
def test_bad_rules_are_one_line_errors(text: str) -> None:
    with pytest.raises(PolicyError) as e:
        parse_rule(text)
    assert "\n" not in str(e.value) and str(e.value)


# --- the decision ---------------------------------------------------------------------------

def test_full_forwards_everything_but_denied() -> None:
    f = compile_policy("p", "full", [], ["10.30.0.0/16", "tcp/25"])
    assert f.verdict_in(ipv4(CLIENT, "10.20.0.10", 1)) is None
    assert f.verdict_in(ipv4(CLIENT, "198.51.100.7", 6, 40000, 443)) is None
    assert f.verdict_in(ipv4(CLIENT, "10.30.1.1", 17, 1, 53)) is DropVerdict.DENIED
    assert f.verdict_in(ipv4(CLIENT, "198.51.100.7", 6, 40000, 25)) is DropVerdict.DENIED
    assert f.verdict_in(ipv4(CLIENT, "198.51.100.7", 17, 40000, 25)) is None


def test_split_forwards_only_allowed() -> None:
    f = compile_policy("p", "split", ["10.20.0.0/16", "10.21.0.80/32 tcp/80,443", "udp/53"],
                       [])
    assert f.verdict_in(ipv4(CLIENT, "10.20.9.9", 1)) is None
    assert f.verdict_in(ipv4(CLIENT, "10.21.0.80", 6, 1234, 443)) is None
    assert f.verdict_in(ipv4(CLIENT, "10.21.0.80", 6, 1234, 22)) is DropVerdict.NOT_ALLOWED
    assert f.verdict_in(ipv4(CLIENT, "10.21.0.81", 6, 1234, 443)) is DropVerdict.NOT_ALLOWED
    assert f.verdict_in(ipv4(CLIENT, "198.51.100.1", 17, 999, 53)) is None
    assert f.verdict_in(ipv4(CLIENT, "198.51.100.1", 6, 999, 53)) is DropVerdict.NOT_ALLOWED
    assert f.verdict_in(ipv6("fd00::2", "2001:db8::1", 58)) is DropVerdict.NOT_ALLOWED


def test_the_narrowest_rule_decides_and_denied_wins_a_tie() -> None:
    # a hole in an allowed range, and an allowed host inside a denied range
    f = compile_policy("p", "split", ["10.20.0.0/16", "10.30.0.5/32"],
                       ["10.20.9.0/24", "10.30.0.0/16", "10.20.0.0/16 tcp/22"])
    assert f.verdict_in(ipv4(CLIENT, "10.20.1.1", 6, 1, 80)) is None
    assert f.verdict_in(ipv4(CLIENT, "10.20.1.1", 6, 1, 22)) is DropVerdict.DENIED
    assert f.verdict_in(ipv4(CLIENT, "10.20.9.1", 1)) is DropVerdict.DENIED
    assert f.verdict_in(ipv4(CLIENT, "10.30.0.5", 1)) is None
    assert f.verdict_in(ipv4(CLIENT, "10.30.0.6", 1)) is DropVerdict.DENIED
    tie = compile_policy("p", "full", ["10.40.0.0/16"], ["10.40.0.0/16"])
    assert tie.verdict_in(ipv4(CLIENT, "10.40.0.1", 1)) is DropVerdict.DENIED


def test_guest_reaches_the_internet_not_internal_ranges() -> None:
    f = compile_policy("guest", "guest", ["10.20.0.53/32 udp/53"],
                       ["198.51.100.66/32", "2001:db8:20::/48"])
    assert f.verdict_in(ipv4(CLIENT, "198.51.100.7", 6, 1, 443)) is None
    assert f.verdict_in(ipv4(CLIENT, "203.0.113.9", 1)) is None
    for internal in ("10.20.0.10", "172.16.3.4", "192.168.1.1", "100.64.0.1", "127.0.0.1",
                     "169.254.169.254", "224.0.0.251", "255.255.255.255"):
        assert f.verdict_in(ipv4(CLIENT, internal, 1)) is DropVerdict.INTERNAL, internal
    assert f.verdict_in(ipv4(CLIENT, "10.20.0.53", 17, 5000, 53)) is None
    assert f.verdict_in(ipv4(CLIENT, "10.20.0.53", 6, 5000, 53)) is DropVerdict.INTERNAL
    assert f.verdict_in(ipv4(CLIENT, "198.51.100.66", 1)) is DropVerdict.DENIED
    assert f.verdict_in(ipv6("fd00::2", "2001:db8::1", 6, 1, 443)) is None
    assert f.verdict_in(ipv6("fd00::2", "fd00:1::1", 6, 1, 443)) is DropVerdict.INTERNAL
    assert f.verdict_in(ipv6("fd00::2", "fe80::1", 58)) is DropVerdict.INTERNAL
    assert f.verdict_in(ipv6("fd00::2", "2001:db8:20::10", 58)) is DropVerdict.DENIED


def test_guest_with_ipv4_rules_only_forwards_no_ipv6() -> None:
    """A guest policy written for IPv4 must not open the site's (global) IPv6 networks: it
    drops IPv6 both ways until one of its rules names an IPv6 network."""
    for allowed, denied in ((["10.20.0.53/32 udp/53"], ["198.51.100.66/32"]), ([], []),
                            (["udp/53", "any icmp"], ["0.0.0.0/0 tcp/25"])):
        f = compile_policy("guest", "guest", allowed, denied)
        for _ in range(2):  # and from the cache
            assert f.verdict_in(ipv6("fd00::2", "2001:db8:20::10", 58)) is DropVerdict.NO_IPV6
            assert f.verdict_in(ipv6("fd00::2", "2001:db8::1", 17, 1, 53)) is DropVerdict.NO_IPV6
            assert f.verdict_out(ipv6("2001:db8::1", "fd00::2", 6, 443, 1)) \
                is DropVerdict.NO_IPV6
            assert f.verdict_in(ipv4(CLIENT, "198.51.100.7", 6, 1, 443)) is None
    # one IPv6 rule, allowed or denied, and IPv6 is decided like IPv4
    opened = compile_policy("guest", "guest", ["::/0"], [])
    assert opened.verdict_in(ipv6("fd00::2", "2001:db8::1", 6, 1, 443)) is None
    assert opened.verdict_in(ipv6("fd00::2", "fd00:20::1", 58)) is DropVerdict.INTERNAL
    # split and full are not changed: split forwards only what it allows anyway
    split = compile_policy("s", "split", ["10.20.0.0/16"], [])
    assert split.verdict_in(ipv6("fd00::2", "2001:db8::1", 58)) is DropVerdict.NOT_ALLOWED
    full = compile_policy("f", "full", [], ["10.20.9.0/24"])
    assert full.verdict_in(ipv6("fd00::2", "fd00:20::10", 58)) is None


def test_guest_allowed_wider_than_an_internal_range_does_not_open_it() -> None:
    f = compile_policy("guest", "guest", ["tcp/443", "0.0.0.0/0"], [])
    assert f.verdict_in(ipv4(CLIENT, "10.20.0.10", 6, 1, 443)) is DropVerdict.INTERNAL


def test_outbound_matches_the_source_side() -> None:
    f = compile_policy("p", "split", ["10.21.0.80/32 tcp/80", "10.20.0.0/16"], [])
    # the answer of an allowed server comes back; the same server's other ports do not
    assert f.verdict_out(ipv4("10.21.0.80", CLIENT, 6, 80, 40000)) is None
    assert f.verdict_out(ipv4("10.21.0.80", CLIENT, 6, 22, 40000)) is DropVerdict.NOT_ALLOWED
    assert f.verdict_out(ipv4("10.20.4.4", CLIENT, 1)) is None
    assert f.verdict_out(ipv4("10.22.0.1", CLIENT, 1)) is DropVerdict.NOT_ALLOWED
    # inbound, the destination is what counts: the same packet the other way
    assert f.verdict_in(ipv4(CLIENT, "10.21.0.80", 6, 40000, 80)) is None
    assert f.verdict_in(ipv4(CLIENT, "10.21.0.80", 6, 80, 40000)) is DropVerdict.NOT_ALLOWED


def test_packets_without_ports_never_match_a_port_rule() -> None:
    f = compile_policy("p", "split", ["10.21.0.80/32 udp/53"], [])
    first = ipv4(CLIENT, "10.21.0.80", 17, 1000, 53, frag_offset=0x2000)  # MF set, offset 0
    later = ipv4(CLIENT, "10.21.0.80", 17, 1000, 53, frag_offset=0x2000 | 185)
    assert f.verdict_in(first) is None
    assert f.verdict_in(later) is DropVerdict.NOT_ALLOWED
    deny = compile_policy("p", "full", [], ["udp/53"])
    assert deny.verdict_in(first) is DropVerdict.DENIED
    assert deny.verdict_in(ipv4(CLIENT, "10.21.0.80", 1)) is None


def test_ipv6_extension_headers_are_walked_to_the_ports() -> None:
    f = compile_policy("p", "split", ["2001:db8::/32 tcp/443"], [])
    hop_by_hop = bytes((6, 0)) + b"\0" * 6  # next header TCP, length 0 (8 bytes)
    pkt = ipv6("fd00::2", "2001:db8::1", 6, 1, 443, hop_by_hop, first_header=0)
    assert f.verdict_in(pkt) is None
    fragment_later = bytes((6, 0)) + (100 << 3).to_bytes(2) + b"\0" * 4
    pkt = ipv6("fd00::2", "2001:db8::1", 6, 1, 443, fragment_later, first_header=44)
    assert f.verdict_in(pkt) is DropVerdict.NOT_ALLOWED


def test_ipv4_options_are_skipped_to_the_ports() -> None:
    f = compile_policy("p", "split", ["tcp/443"], [])
    plain = ipv4(CLIENT, "198.51.100.7", 6, 1, 443)
    with_options = bytes((0x46,)) + plain[1:2] + (len(plain) + 4).to_bytes(2) + plain[4:20] \
        + b"\x01\x01\x01\x00" + plain[20:]
    assert f.verdict_in(with_options) is None
    assert f.verdict_in(with_options[:24]) is DropVerdict.NOT_ALLOWED  # ports cut off


@pytest.mark.parametrize("pkt", [b"", b"\x45" + b"\0" * 10, b"\x60" + b"\0" * 30,
                                 b"\x10" + b"\0" * 40])
def test_unreadable_packets_are_dropped(pkt: bytes) -> None:
    assert compile_policy("p", "full", [], []).verdict_in(pkt) is DropVerdict.MALFORMED


def test_fail_closed_drops_everything_both_ways() -> None:
    f = fail_closed("gone")
    assert f.name == "gone"
    assert f.verdict_in(ipv4(CLIENT, "198.51.100.7", 1)) is DropVerdict.UNRESOLVED
    assert f.verdict_out(ipv4("198.51.100.7", CLIENT, 1)) is DropVerdict.UNRESOLVED


def test_the_verdict_cache_stays_bounded_and_right() -> None:
    f = compile_policy("p", "split", ["10.20.0.0/16"], [])
    for i in range(CACHE_ENTRIES + 10):
        dst = str(ipaddress.ip_address("10.20.0.0") + i % 65536) if i % 2 else \
            str(ipaddress.ip_address("10.21.0.0") + i % 65536)
        expect = None if i % 2 else DropVerdict.NOT_ALLOWED
        assert f.verdict_in(ipv4(CLIENT, dst, 17, 1, i % 65536)) is expect
    assert all(len(c) <= CACHE_ENTRIES for c in f._cache_in if c is not None)


addresses = st.ip_addresses(v=4).map(str)
rule_texts = st.one_of(
    st.tuples(addresses, st.integers(0, 32)).map(lambda t: f"{t[0]}/{t[1]}"),
    st.tuples(st.sampled_from(["tcp", "udp"]), st.integers(0, 65535)).map(
        lambda t: f"{t[0]}/{t[1]}"),
    st.tuples(addresses, st.integers(8, 32), st.sampled_from(["tcp", "udp"]),
              st.integers(0, 65535), st.integers(0, 100)).map(
        lambda t: f"{t[0]}/{t[1]} {t[2]}/{t[3]}-{min(65535, t[3] + t[4])}"))


def _reference(mode: str, allowed: list[str], denied: list[str], dst: str, proto: int,
               dport: int) -> DropVerdict | None:
    """The decision as the operator guide words it, rule by rule, without the compiler."""
    matching = []
    for verdict, texts in ((DropVerdict.DENIED, denied), (None, allowed)):
        for text in texts:
            r = parse_rule(text)
            if r.network is not None and ipaddress.ip_address(dst) not in r.network:
                continue
            if r.protocol is not None and r.protocol != proto:
                continue
            if r.ports and not any(a <= dport <= b for a, b in r.ports):
                continue
            matching.append((r.specificity, verdict is None, verdict))
    if mode == "guest":
        from cluster.policy.matcher import GUEST_INTERNAL
        for net in GUEST_INTERNAL:
            n = ipaddress.ip_network(net)
            if n.version == 4 and ipaddress.ip_address(dst) in n:
                matching.append(((n.prefixlen, False, False), False, DropVerdict.INTERNAL))
    if not matching:
        return DropVerdict.NOT_ALLOWED if mode == "split" else None
    best = max(m[0] for m in matching)
    tied = [m for m in matching if m[0] == best]
    denying = [m[2] for m in tied if m[2] is not None]
    return (DropVerdict.DENIED if DropVerdict.DENIED in denying else denying[0]) \
        if denying else None


@given(st.sampled_from(["full", "split", "guest"]), st.lists(rule_texts, max_size=6),
       st.lists(rule_texts, max_size=6), addresses, st.sampled_from([1, 6, 17]),
       st.integers(0, 65535))
def test_compiled_filter_agrees_with_the_documented_decision(
        mode: str, allowed: list[str], denied: list[str], dst: str, proto: int,
        dport: int) -> None:
    f = compile_policy("p", mode, allowed, denied)  # type: ignore[arg-type]
    pkt = ipv4(CLIENT, dst, proto, 1, dport)
    want = _reference(mode, allowed, denied, dst, proto, dport if proto != 1 else -1)
    assert f.verdict_in(pkt) == want
    assert f.verdict_in(pkt) == want  # cached


def test_ipv6_verdicts_are_cached_per_flow_and_stay_right() -> None:
    f = compile_policy("p", "split", ["2001:db8::/32 tcp/443", "2001:db8:1::/48"], [])
    for _ in range(2):  # the second round comes from the cache
        assert f.verdict_in(ipv6("fd00::2", "2001:db8::1", 6, 1, 443)) is None
        assert f.verdict_in(ipv6("fd00::2", "2001:db8::1", 6, 1, 80)) is DropVerdict.NOT_ALLOWED
        assert f.verdict_in(ipv6("fd00::2", "2001:db8:1::9", 58)) is None
        assert f.verdict_in(ipv6("fd00::2", "2001:db8:2::9", 58)) is DropVerdict.NOT_ALLOWED
        assert f.verdict_out(ipv6("2001:db8::1", "fd00::2", 6, 443, 1)) is None
        assert f.verdict_out(ipv6("2001:db8::1", "fd00::2", 6, 80, 1)) is DropVerdict.NOT_ALLOWED


# --- binding (what keyd writes into sa/<spi>) ------------------------------------------------

def test_binding_connection_first_then_identity_then_none() -> None:
    from cluster.policy import bind_policy
    from cluster.store import Policy
    policies = {
        "guest": Policy("guest", ["*@guest.example.org"], "guest", ["10.20.0.53/32 udp/53"]),
        "staff": Policy("staff", ["*@example.org"], "split", ["10.20.0.0/16"], ["tcp/25"]),
    }
    bound = bind_policy("staff", "x@guest.example.org", policies)
    assert bound is not None and bound.name == "staff" and bound.mode == "split"
    assert bound.allowed == ("10.20.0.0/16",) and bound.denied == ("tcp/25",)
    guest = bind_policy(None, "visitor@guest.example.org", policies)
    assert guest is not None and guest.name == "guest" and guest.mode == "guest"
    assert bind_policy(None, "eve@elsewhere.net", policies) is None
    missing = bind_policy("gone", "x@example.org", policies)
    assert missing is not None and missing.name == "gone" and missing.mode is None
    # a policy whose value is now malformed still binds by its last identities: no snapshot
    bad = bind_policy(None, "visitor@guest.example.org", policies, unusable={"guest"})
    assert bad is not None and bad.name == "guest" and bad.mode is None
