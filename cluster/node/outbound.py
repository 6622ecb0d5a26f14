"""Which owned SA carries an outbound packet: the client's own addresses, then subnets.

Sans-I/O. A client is reached by its *keys*: a packed host address (4 or 16 bytes: the
virtual IP, or a /32 or /128 remote traffic selector) or a packed network (address + one
prefix-length byte: 5 or 17 bytes) for a remote selector that is a subnet (a site behind the
client, RFC 7296 §2.9). A packet's destination is looked up as a host first (one dict
lookup, the hot path), then by longest prefix among the networks.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Generic, TypeVar

S = TypeVar("S")


def host_key(address: str) -> bytes:
    return ipaddress.ip_address(address).packed


def network_key(network: str) -> bytes:
    """The key of a subnet; a single-address network is a host key."""
    net = ipaddress.ip_network(network, strict=False)
    if net.num_addresses == 1:
        return net.network_address.packed
    return net.network_address.packed + bytes([net.prefixlen])


def is_network(key: bytes) -> bool:
    return len(key) in (5, 17)


def is_ipv6(key: bytes) -> bool:
    return len(key) in (16, 17)


def gateway_for(key: bytes, address: str, address6: str | None) -> str | None:
    """The address of another node to route a client key to: its back-end `address` for an
    IPv4 key, its `address6` for an IPv6 one (None: it has none, the key cannot go there)."""
    return address6 if is_ipv6(key) else address


def key_text(key: bytes) -> str:
    """`10.99.0.7/32` or `10.50.0.0/24`: what `ip route` takes."""
    if is_network(key):
        return f"{ipaddress.ip_address(key[:-1])}/{key[-1]}"
    ip = ipaddress.ip_address(key)
    return f"{ip}/{ip.max_prefixlen}"


class OutboundTable(Generic[S]):
    """Keys (host or network) → the SA that sends to them, with longest-prefix lookup."""

    def __init__(self) -> None:
        #: host key → SA: the hot path reads this dict directly
        self.hosts: dict[bytes, S] = {}
        self.networks: dict[bytes, S] = {}
        # per address length: [(prefix length, {network number: SA})], longest first
        self._by_len: dict[int, list[tuple[int, dict[int, S]]]] = {}

    def get(self, key: bytes) -> S | None:
        return (self.networks if is_network(key) else self.hosts).get(key)

    def set(self, key: bytes, sa: S) -> None:
        if is_network(key):
            self.networks[key] = sa
            self._rebuild()
        else:
            self.hosts[key] = sa

    def pop(self, key: bytes) -> S | None:
        if is_network(key):
            sa = self.networks.pop(key, None)
            self._rebuild()
            return sa
        return self.hosts.pop(key, None)

    def lookup(self, dst: bytes) -> S | None:
        """The SA for a packet to `dst` (packed): its host entry, else the longest prefix."""
        sa = self.hosts.get(dst)
        if sa is not None or not self.networks:
            return sa
        return self.longest_prefix(dst)

    def longest_prefix(self, dst: bytes) -> S | None:
        tables = self._by_len.get(len(dst))
        if not tables:
            return None
        value = int.from_bytes(dst)
        bits = len(dst) * 8
        for plen, table in tables:
            sa = table.get(value >> (bits - plen))
            if sa is not None:
                return sa
        return None

    def __iter__(self) -> Iterator[bytes]:
        yield from self.hosts
        yield from self.networks

    def __len__(self) -> int:
        return len(self.hosts) + len(self.networks)

    def _rebuild(self) -> None:
        by_len: dict[int, dict[int, dict[int, S]]] = {}
        for key, sa in self.networks.items():
            addr, plen = key[:-1], key[-1]
            bits = len(addr) * 8
            number = int.from_bytes(addr) >> (bits - plen) if plen else 0
            by_len.setdefault(len(addr), {}).setdefault(plen, {})[number] = sa
        self._by_len = {n: sorted(t.items(), key=lambda kv: -kv[0])
                        for n, t in by_len.items()}
