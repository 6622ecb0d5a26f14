"""Outbound SA lookup: client hosts exactly, subnet selectors by longest prefix, against a
reference built on `ipaddress`."""

from __future__ import annotations

import ipaddress
import time
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.node.outbound import OutboundTable, gateway_for, host_key, key_text, network_key
from cluster.node.sa import client_addresses
from cluster.store import ChildSaRecord


def test_host_first_then_longest_prefix() -> None:
    t: OutboundTable[str] = OutboundTable()
    t.set(network_key("10.50.0.0/16"), "wide")
    t.set(network_key("10.50.7.0/24"), "narrow")
    t.set(host_key("10.50.7.9"), "host")
    assert t.lookup(host_key("10.50.7.9")) == "host"
    assert t.lookup(host_key("10.50.7.10")) == "narrow"
    assert t.lookup(host_key("10.50.8.1")) == "wide"
    assert t.lookup(host_key("10.51.0.1")) is None
    assert t.lookup(host_key("2001:db8::1")) is None
    t.pop(network_key("10.50.7.0/24"))
    assert t.lookup(host_key("10.50.7.10")) == "wide"
    assert len(t) == 2 and set(t) == {host_key("10.50.7.9"), network_key("10.50.0.0/16")}


def test_keys_and_their_route_text() -> None:
    assert network_key("10.99.0.7/32") == host_key("10.99.0.7")  # a /32 is a host
    assert key_text(network_key("10.50.0.9/24")) == "10.50.0.0/24"
    assert key_text(host_key("10.99.0.7")) == "10.99.0.7/32"
    assert key_text(network_key("2001:db8:1::/48")) == "2001:db8:1::/48"
    assert key_text(host_key("2001:db8::7")) == "2001:db8::7/128"


def _record(ts_remote: list[str], virtual_ip: str | None) -> ChildSaRecord:
    return ChildSaRecord(
        spi_in=1, spi_out=2, ike_sa_id="0" * 32, encr="aes128gcm16", integ=None, esn=False,
        enc_key_in=b"k" * 20, integ_key_in=b"", enc_key_out=b"k" * 20, integ_key_out=b"",
        ts_local=["10.20.0.0/24"], ts_remote=ts_remote, peer_addr="192.0.2.7",
        peer_port=4500, udp_encap=True, virtual_ip=virtual_ip, identity="site-1",
        created_at=time.time(), soft_lifetime_s=3000, hard_lifetime_s=3600)


def test_client_addresses_of_a_site_and_of_a_road_warrior() -> None:
    site = _record(["10.50.0.0/24", "10.60.0.1/32", "0.0.0.0/0"], None)
    assert client_addresses(site) == (network_key("10.50.0.0/24"), host_key("10.60.0.1"))
    warrior = _record(["10.99.0.7/32"], "10.99.0.7")
    assert client_addresses(warrior) == (host_key("10.99.0.7"),)


def test_a_dual_stack_client_is_reached_at_both_virtual_addresses() -> None:
    dual = replace(_record(["10.99.0.7/32", "fd00:99::7/128"], "10.99.0.7"),
                   virtual_ip6="fd00:99::7")
    assert client_addresses(dual) == (host_key("10.99.0.7"), host_key("fd00:99::7"))
    only6 = replace(_record(["fd00:99::7/128"], None), virtual_ip6="fd00:99::7")
    assert client_addresses(only6) == (host_key("fd00:99::7"),)
    t: OutboundTable[str] = OutboundTable()
    for key in client_addresses(dual):
        t.set(key, "dual")
    # a packet's destination, as the TUN reader slices it (IPv4 16:20, IPv6 24:40)
    assert t.lookup(ipaddress.IPv6Address("fd00:99::7").packed) == "dual"
    assert t.lookup(ipaddress.IPv6Address("fd00:99::8").packed) is None


networks = st.builds(lambda a, p: str(ipaddress.ip_network(f"{ipaddress.IPv4Address(a)}/{p}",
                                                              strict=False)),
                     st.integers(0, 2**32 - 1), st.integers(1, 32))


@settings(max_examples=200, deadline=None)
@given(st.lists(networks, min_size=1, max_size=12, unique=True),
       st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=20),
       st.data())
def test_longest_prefix_matches_a_reference(nets: list[str], probes: list[int],
                                            data: st.DataObject) -> None:
    t: OutboundTable[str] = OutboundTable()
    for n in nets:
        t.set(network_key(n), n)
    gone = data.draw(st.lists(st.sampled_from(nets), unique=True, max_size=len(nets) - 1))
    for n in gone:
        t.pop(network_key(n))
    live = [ipaddress.ip_network(n) for n in nets if n not in gone]
    # probes inside the networks too, not only random addresses
    probes += [int(n.network_address) + (int(n.num_addresses) - 1) // 2 for n in live]
    for p in probes:
        addr = ipaddress.IPv4Address(p)
        matching = [n for n in live if addr in n]
        want = str(max(matching, key=lambda n: n.prefixlen)) if matching else None
        assert t.lookup(addr.packed) == want


def test_a_hand_off_forwards_each_family_to_the_new_owners_address_of_that_family() -> None:
    assert gateway_for(host_key("10.99.0.7"), "10.30.0.12", "fd00:30::12") == "10.30.0.12"
    assert gateway_for(host_key("fd00:99::7"), "10.30.0.12", "fd00:30::12") == "fd00:30::12"
    assert gateway_for(network_key("fd00:50::/64"), "10.30.0.12", "fd00:30::12") == \
        "fd00:30::12"
    assert gateway_for(host_key("fd00:99::7"), "10.30.0.12", None) is None
