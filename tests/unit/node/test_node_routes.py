"""The rtnetlink messages the node writes its client routes with (cluster.node.tun)."""

from __future__ import annotations

import socket
import struct

import pytest

from cluster.netlink import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    RT_SCOPE_NOWHERE,
    RT_SCOPE_UNIVERSE,
    RT_TABLE_MAIN,
    RTA_DST,
    RTA_GATEWAY,
    RTM_DELROUTE,
    RTM_NEWROUTE,
    RTN_UNICAST,
)
from cluster.node.outbound import host_key, network_key
from cluster.node.tun import (
    RT_SCOPE_LINK,
    RTA_OIF,
    RTPROT_BOOT,
    RouteChange,
    TunError,
    push_route_change,
)


def parse(msg: bytes) -> tuple[tuple[int, ...], tuple[int, ...], dict[int, bytes]]:
    header = struct.unpack_from("=IHHII", msg)
    assert header[0] == len(msg)
    rtm = struct.unpack_from("=BBBBBBBBI", msg, 16)
    attrs: dict[int, bytes] = {}
    off = 16 + 12
    while off < len(msg):
        length, kind = struct.unpack_from("=HH", msg, off)
        attrs[kind] = msg[off + 4:off + length]
        off += (length + 3) & ~3
    assert off == len(msg)
    return header, rtm, attrs


def test_host_route_to_the_tun_is_a_link_scope_replace() -> None:
    header, rtm, attrs = parse(push_route_change(7, RouteChange("tun", host_key("10.99.0.7")), 42))
    assert header[1] == RTM_NEWROUTE and header[3] == 7
    assert header[2] == NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
    family, dst_len, _, _, table, proto, scope, kind, _ = rtm
    assert (family, dst_len, table, proto, scope, kind) == (
        socket.AF_INET, 32, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_LINK, RTN_UNICAST)
    assert attrs == {RTA_DST: socket.inet_aton("10.99.0.7"), RTA_OIF: struct.pack("=i", 42)}


def test_network_and_ipv6_keys_keep_their_prefix() -> None:
    _, rtm, attrs = parse(push_route_change(1, RouteChange("tun", network_key("10.50.0.0/24")),
                                            3))
    assert rtm[1] == 24 and attrs[RTA_DST] == socket.inet_aton("10.50.0.0")
    _, rtm, attrs = parse(push_route_change(2, RouteChange("tun", host_key("2001:db8::7")), 3))
    assert rtm[0] == socket.AF_INET6 and rtm[1] == 128 and rtm[6] == RT_SCOPE_UNIVERSE
    assert attrs[RTA_DST] == socket.inet_pton(socket.AF_INET6, "2001:db8::7")


def test_delete_names_the_device_and_forwarding_names_the_gateway() -> None:
    header, rtm, attrs = parse(push_route_change(3, RouteChange("del", host_key("10.99.0.7")), 9))
    assert header[1] == RTM_DELROUTE and header[2] == NLM_F_REQUEST | NLM_F_ACK
    assert rtm[6] == RT_SCOPE_NOWHERE and attrs[RTA_OIF] == struct.pack("=i", 9)
    via = RouteChange("via", host_key("10.99.0.7"), "10.30.0.12")
    header, rtm, attrs = parse(push_route_change(4, via, 0))
    assert header[1] == RTM_NEWROUTE and rtm[6] == RT_SCOPE_UNIVERSE
    assert attrs == {RTA_DST: socket.inet_aton("10.99.0.7"),
                     RTA_GATEWAY: socket.inet_aton("10.30.0.12")}
    header, _, attrs = parse(push_route_change(5, RouteChange("unvia", via.address,
                                                              via.gateway), 0))
    assert header[1] == RTM_DELROUTE and RTA_GATEWAY in attrs and RTA_OIF not in attrs


def test_gateway_of_the_other_family_or_junk_is_refused() -> None:
    with pytest.raises(TunError):
        push_route_change(1, RouteChange("via", host_key("10.99.0.7"), "2001:db8::1"), 0)
    with pytest.raises(ValueError):
        push_route_change(1, RouteChange("via", host_key("10.99.0.7"), "not-an-address"), 0)
