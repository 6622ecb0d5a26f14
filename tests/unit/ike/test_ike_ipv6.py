"""IPv6 inside the tunnel: INTERNAL_IP6_ADDRESS / INTERNAL_IP6_DNS (RFC 7296 §3.15.1) and
IPv6 traffic selectors (§2.9), beside IPv4 or alone; the responder driven by the project's
initiator on a virtual clock."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from ikepair import CLIENT, PSK, VIP, Clock, Side, transfer

from keyd.ike import (
    AddressRequested,
    ChildSaEstablished,
    Credentials,
    IkeSaEstablished,
    IkeUsageError,
    Initiator,
    InitiatorConfig,
    Responder,
    ResponderConfig,
)
from keyd.ike.attributes import (
    IP6_ADDRESS_PREFIX,
    address_ask,
    address_attribute,
    dns_attributes,
    pull_ip6_address,
    subnet_attributes,
)
from keyd.ike.connections import Connection, LocalAuth, RemoteAuth
from keyd.ike.constants import CfgAttr, TsType
from keyd.ike.ikesa import export_sa, import_sa
from keyd.ike.selectors import narrow, selector_for, to_cidrs

V6 = ipaddress.IPv6Address("fd00:99::7").packed


# ---- the attribute codec ------------------------------------------------------------------

def test_address_ask_reads_both_families() -> None:
    ask = address_ask([(CfgAttr.INTERNAL_IP4_ADDRESS, b""), (CfgAttr.INTERNAL_IP6_ADDRESS, b""),
                       (CfgAttr.INTERNAL_IP6_DNS, b"")])
    assert (ask.ipv4, ask.ipv6, ask.requested4, ask.requested6) == (True, True, None, None)
    # a client that names the addresses it had (a reconnect)
    ask = address_ask([(CfgAttr.INTERNAL_IP6_ADDRESS, V6 + bytes([64])),
                       (CfgAttr.INTERNAL_IP4_ADDRESS, bytes([10, 99, 0, 7]))])
    assert (ask.requested4, ask.requested6) == ("10.99.0.7", "fd00:99::7")
    # IPv4 only, as before: nothing about IPv6
    ask = address_ask([(CfgAttr.INTERNAL_IP4_ADDRESS, b""), (CfgAttr.INTERNAL_IP4_DNS, b"")])
    assert ask.ipv4 and not ask.ipv6 and ask.any
    assert not address_ask([(CfgAttr.INTERNAL_IP6_DNS, b"")]).any


@pytest.mark.parametrize("value", [V6, V6 + b"\x40\x00", bytes(17), b"\x01" * 3])
def test_address_ask_takes_a_malformed_or_zero_ipv6_request_as_any(value: bytes) -> None:
    ask = address_ask([(CfgAttr.INTERNAL_IP6_ADDRESS, value)])
    assert ask.ipv6 and ask.requested6 is None


def test_ipv6_address_attribute_is_address_and_prefix_length() -> None:
    kind, value = address_attribute("fd00:99::7")
    assert kind == CfgAttr.INTERNAL_IP6_ADDRESS
    assert value == V6 + bytes([IP6_ADDRESS_PREFIX]) and len(value) == 17
    assert pull_ip6_address(value) == ("fd00:99::7", 128)
    assert address_attribute("10.99.0.7") == (CfgAttr.INTERNAL_IP4_ADDRESS,
                                              bytes([10, 99, 0, 7]))
    for bad in (b"", V6, V6 + b"\x81", V6 + b"\x40\x00"):
        assert pull_ip6_address(bad) is None


def test_dns_and_subnet_attributes_by_family() -> None:
    servers = ["10.20.0.53", "fd00:20::53"]
    assert dns_attributes(servers, 4) == ((CfgAttr.INTERNAL_IP4_DNS, bytes([10, 20, 0, 53])),)
    assert dns_attributes(servers, 6) == (
        (CfgAttr.INTERNAL_IP6_DNS, ipaddress.IPv6Address("fd00:20::53").packed),)
    nets = ["0.0.0.0/0", "10.20.0.0/16", "::/0", "fd00:20::/64"]
    assert subnet_attributes(nets, 4) == (
        (CfgAttr.INTERNAL_IP4_SUBNET, bytes([10, 20, 0, 0, 255, 255, 0, 0])),)
    assert subnet_attributes(nets, 6) == (
        (CfgAttr.INTERNAL_IP6_SUBNET, ipaddress.IPv6Address("fd00:20::").packed + b"\x40"),)


def test_ipv6_selectors_narrow_like_ipv4() -> None:
    proposed = [selector_for("0.0.0.0/0"), selector_for("::/0")]
    assert proposed[1].ts_type == TsType.IPV6_ADDR_RANGE
    got = narrow(proposed, [selector_for("10.99.0.7/32"), selector_for("fd00:99::7/128")])
    assert to_cidrs(got) == ("10.99.0.7/32", "fd00:99::7/128")
    # a family the responder does not allow is narrowed away, not widened
    assert to_cidrs(narrow([selector_for("::/0")], [selector_for("10.20.0.0/16")])) == ()
    assert to_cidrs(narrow(proposed, [selector_for("fd00:20::/64")])) == ("fd00:20::/64",)


# ---- the exchange ------------------------------------------------------------------------

def _pair(pool6: str | None, request4: bool = True, request6: bool = True,
          **conn: Any) -> tuple[Side, Side]:
    c = Connection("dual", ("aes128gcm16-prfsha256-x25519",), ("aes128gcm16",),
                   remote_auth=RemoteAuth.PSK, local_auth=LocalAuth.PSK, pool="10.99.0.0/24",
                   pool6=pool6, dns=("10.20.0.53", "fd00:20::53"),
                   protected_networks=conn.pop("protected", ("10.20.0.0/16", "fd00:20::/64")))
    server = Responder(ResponderConfig(identity="vpn.example.net",
                                       credentials=Credentials(psk=PSK), connections=[c]))
    client = Initiator(InitiatorConfig(
        identity="client@example.net", credentials=Credentials(psk=PSK),
        request_address=request4, request_address6=request6,
        ts_local=("0.0.0.0/0", "::/0"), ts_remote=("0.0.0.0/0", "::/0")))
    return Side(client), Side(server)


def _run(client: Side, server: Side, addr4: str | None, addr6: str | None) -> Clock:
    clock = Clock()
    client.endpoint.connect(CLIENT, VIP, clock.now)
    for _ in range(10):
        moved = transfer(client, server, clock.now)
        for ev in server.pull_events():
            if isinstance(ev, AddressRequested):
                server.endpoint.assign_address(ev.ike_sa_id, addr4 if ev.ipv4 else None,
                                               clock.now, addr6 if ev.ipv6 else None)
        moved += transfer(server, client, clock.now)
        if not moved:
            break
    return clock


def test_dual_stack_client_gets_both_addresses_and_selectors() -> None:
    client, server = _pair("fd00:99::/112")
    _run(client, server, "10.99.0.1", "fd00:99::1")
    (req,) = server.of(AddressRequested)
    assert req.ipv4 and req.ipv6 and req.pool6 == "fd00:99::/112"
    assert (client.endpoint.virtual_ip, client.endpoint.virtual_ip6) == ("10.99.0.1",
                                                                         "fd00:99::1")
    est = server.of(IkeSaEstablished)[0]
    assert (est.virtual_ip, est.virtual_ip6) == ("10.99.0.1", "fd00:99::1")
    s = server.of(ChildSaEstablished)[0].child
    assert s.ts_remote == ("10.99.0.1/32", "fd00:99::1/128")
    assert s.ts_local == ("10.20.0.0/16", "fd00:20::/64")
    assert (s.virtual_ip, s.virtual_ip6) == ("10.99.0.1", "fd00:99::1")
    c = client.of(ChildSaEstablished)[0].child
    assert set(c.ts_local) == set(s.ts_remote) and set(c.ts_remote) == set(s.ts_local)
    # another keyd instance continues the IKE SA with its IPv6 address
    (ike_sa_id,) = server.endpoint.ike_sa_ids()
    again = import_sa(export_sa(import_sa(server.endpoint.export_ike_sa(ike_sa_id))))
    assert again.virtual_ip6 == "fd00:99::1"
    assert again.children[s.spi_in].virtual_ip6 == "fd00:99::1"


def test_without_ipv6_pool_a_dual_stack_client_gets_ipv4_only() -> None:
    client, server = _pair(None)
    _run(client, server, "10.99.0.1", "fd00:99::1")
    (req,) = server.of(AddressRequested)
    assert req.ipv4 and not req.ipv6
    assert (client.endpoint.virtual_ip, client.endpoint.virtual_ip6) == ("10.99.0.1", None)
    s = server.of(ChildSaEstablished)[0].child
    assert s.ts_remote == ("10.99.0.1/32",) and s.virtual_ip6 is None
    assert not server.endpoint.counters.errors["INTERNAL_ADDRESS_FAILURE"]


def test_ipv4_only_client_is_served_as_before() -> None:
    client, server = _pair("fd00:99::/112", request6=False)
    _run(client, server, "10.99.0.1", "fd00:99::1")
    (req,) = server.of(AddressRequested)
    assert req.ipv4 and not req.ipv6
    assert client.endpoint.virtual_ip6 is None
    assert server.of(ChildSaEstablished)[0].child.ts_remote == ("10.99.0.1/32",)


def test_ipv6_only_client_without_ipv6_pool_gets_internal_address_failure() -> None:
    client, server = _pair(None, request4=False)
    _run(client, server, "10.99.0.1", "fd00:99::1")
    assert not server.of(AddressRequested) and not server.of(ChildSaEstablished)
    assert server.endpoint.counters.errors["INTERNAL_ADDRESS_FAILURE"] == 1


def test_ipv6_only_client_with_ipv6_pool() -> None:
    client, server = _pair("fd00:99::/112", request4=False)
    _run(client, server, "10.99.0.1", "fd00:99::5")
    (req,) = server.of(AddressRequested)
    assert req.ipv6 and not req.ipv4
    s = server.of(ChildSaEstablished)[0].child
    assert (s.virtual_ip, s.virtual_ip6, s.ts_remote) == (None, "fd00:99::5",
                                                          ("fd00:99::5/128",))


def test_one_family_exhausted_the_other_goes_on() -> None:
    client, server = _pair("fd00:99::/112")
    _run(client, server, None, "fd00:99::1")
    s = server.of(ChildSaEstablished)[0].child
    assert (s.virtual_ip, s.ts_remote) == (None, ("fd00:99::1/128",))
    client, server = _pair("fd00:99::/112")
    _run(client, server, None, None)
    assert not server.of(ChildSaEstablished)
    assert server.endpoint.counters.errors["INTERNAL_ADDRESS_FAILURE"] == 1


def test_ipv6_client_of_an_ipv4_only_connection_keeps_ipv4_selectors() -> None:
    client, server = _pair("fd00:99::/112", protected=("10.20.0.0/16",))
    _run(client, server, "10.99.0.1", "fd00:99::1")
    s = server.of(ChildSaEstablished)[0].child
    assert s.ts_local == ("10.20.0.0/16",)


def test_assign_address_checks_the_families() -> None:
    client, server = _pair("fd00:99::/112")
    clock = Clock()
    client.endpoint.connect(CLIENT, VIP, clock.now)
    transfer(client, server, clock.now)
    transfer(server, client, clock.now)
    transfer(client, server, clock.now)
    (req,) = [e for e in server.pull_events() if isinstance(e, AddressRequested)]
    with pytest.raises(IkeUsageError):
        server.endpoint.assign_address(req.ike_sa_id, "fd00:99::1", clock.now)
