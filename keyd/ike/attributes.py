"""Configuration attributes (RFC 7296 §3.15.1): what a CFG_REQUEST asks for, and the values
of a CFG_REPLY, for both address families.

An attribute is a (type, value) pair of CpPayload. Address attributes:

- INTERNAL_IP4_ADDRESS: 0 or 4 octets; INTERNAL_IP4_DNS: 0 or 4; INTERNAL_IP4_SUBNET: 0 or
  8 (address and netmask);
- INTERNAL_IP6_ADDRESS: 0 or 17 octets (address and prefix length); INTERNAL_IP6_DNS: 0
  or 16; INTERNAL_IP6_SUBNET: 0 or 17 (address and prefix length).

In a request, a value names the address the client would like (after a reconnect); an empty
or all-zero one, or one of a wrong length, asks for any address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from .constants import CfgAttr

Attribute = tuple[int, bytes]

#: the prefix length sent with an INTERNAL_IP6_ADDRESS: the client's own address, alone
#: (as strongSwan's responder does; everything else is reached through the tunnel)
IP6_ADDRESS_PREFIX = 128


@dataclass(frozen=True, slots=True)
class AddressAsk:
    """The virtual addresses a CFG_REQUEST asks for. `requested4` / `requested6`: the
    address the client named, or None for any."""

    ipv4: bool = False
    ipv6: bool = False
    requested4: str | None = None
    requested6: str | None = None

    @property
    def any(self) -> bool:
        return self.ipv4 or self.ipv6


def address_ask(attributes: Iterable[Attribute]) -> AddressAsk:
    """What a CFG_REQUEST's attributes ask for (the first attribute of each family counts)."""
    ipv4 = ipv6 = False
    requested4 = requested6 = None
    for t, v in attributes:
        if t == CfgAttr.INTERNAL_IP4_ADDRESS and not ipv4:
            ipv4 = True
            if len(v) == 4 and any(v):
                requested4 = str(ipaddress.IPv4Address(v))
        elif t == CfgAttr.INTERNAL_IP6_ADDRESS and not ipv6:
            ipv6 = True
            if len(v) == 17 and any(v[:16]):
                requested6 = str(ipaddress.IPv6Address(v[:16]))
    return AddressAsk(ipv4, ipv6, requested4, requested6)


def address_attribute(address: str) -> Attribute:
    """INTERNAL_IP4_ADDRESS or INTERNAL_IP6_ADDRESS (with IP6_ADDRESS_PREFIX) of `address`."""
    ip = ipaddress.ip_address(address)
    if ip.version == 4:
        return CfgAttr.INTERNAL_IP4_ADDRESS, ip.packed
    return CfgAttr.INTERNAL_IP6_ADDRESS, ip.packed + bytes([IP6_ADDRESS_PREFIX])


def pull_ip6_address(value: bytes) -> tuple[str, int] | None:
    """An INTERNAL_IP6_ADDRESS value as (address, prefix length); None if it holds none
    (empty, a wrong length, or a prefix length beyond 128)."""
    if len(value) != 17 or value[16] > 128:
        return None
    return str(ipaddress.IPv6Address(value[:16])), value[16]


def dns_attributes(servers: Iterable[str], version: int) -> tuple[Attribute, ...]:
    """INTERNAL_IP4_DNS (version 4) or INTERNAL_IP6_DNS (version 6) of the servers of that
    family."""
    kind = CfgAttr.INTERNAL_IP4_DNS if version == 4 else CfgAttr.INTERNAL_IP6_DNS
    return tuple((kind, ip.packed) for ip in map(ipaddress.ip_address, servers)
                 if ip.version == version)


def subnet_attributes(networks: Iterable[str], version: int) -> tuple[Attribute, ...]:
    """INTERNAL_IP4_SUBNET (address, netmask) or INTERNAL_IP6_SUBNET (address, prefix
    length) of the networks of that family; a /0 says nothing and is left out."""
    out: list[Attribute] = []
    for n in (ipaddress.ip_network(x, strict=False) for x in networks):
        if n.version != version or n.prefixlen == 0:
            continue
        if n.version == 4:
            out.append((CfgAttr.INTERNAL_IP4_SUBNET,
                        n.network_address.packed + n.netmask.packed))
        else:
            out.append((CfgAttr.INTERNAL_IP6_SUBNET,
                        n.network_address.packed + bytes([n.prefixlen])))
    return tuple(out)
