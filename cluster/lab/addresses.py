"""The lab's address plan: which namespace holds which address (DESIGN.md, "Packet paths").

Documentation and private ranges, used only inside the lab's namespaces.
"""

from __future__ import annotations

import ipaddress

VIP = "203.0.113.10"
GATEWAY_ID = "vpn.lab.example"
FRONT_NETWORK = "192.0.2.0/24"
FRONT_ROUTER = "192.0.2.1"
NAT_NETWORK = "198.51.100.0/24"
NAT_INSIDE = "198.51.100.1"
BACK_NETWORK = "10.30.0.0/24"
BACK_ROUTER = "10.30.0.1"
ETCD_IP = "10.30.0.2"     # the etcd member (of three: the first)
ETCD_PORT = 2379
ETCD_MEMBERS = (1, 3)     # a lab's etcd: one member, or a cluster of three
PROTECTED_NETWORK = "10.20.0.0/24"
PROTECTED_ROUTER = "10.20.0.1"
SERVER_IP = "10.20.0.10"
GATEWAY_INSIDE = "10.20.0.5"   # the baseline gateway's own address in the protected network
POOL = "10.99.0.0/24"
# Inner IPv6 (clients' IPv6 virtual addresses, the protected network, the back end the router
# returns it through): unique local addresses (RFC 4193), inside the lab's namespaces only.
# The outer traffic (IKE, ESP) stays IPv4.
PROTECTED_NETWORK6 = "fd00:20::/64"
PROTECTED_ROUTER6 = "fd00:20::1"
SERVER_IP6 = "fd00:20::10"
BACK_NETWORK6 = "fd00:30::/64"
BACK_ROUTER6 = "fd00:30::1"
POOL6 = "fd00:99::/112"

MAX_KEYD = 6       # 10.30.0.5 .. 10.30.0.10
MAX_NODES = 100    # 10.30.0.11 .. 10.30.0.110
MAX_CLIENTS = 150  # 192.0.2.100 .. 192.0.2.249 (NAT namespace takes 192.0.2.99)


def etcd_ip(index: int) -> str:
    """Back-end address of etcd member <index> (1-based): 10.30.0.2 .. 10.30.0.4, all in the
    etcd namespace."""
    if not 1 <= index <= max(ETCD_MEMBERS):
        raise ValueError(f"etcd member {index} outside 1..{max(ETCD_MEMBERS)}")
    return f"10.30.0.{1 + index}"


def etcd_endpoints(members: int) -> list[str]:
    """What every component of a lab with `members` etcd members lists as its endpoints."""
    return [f"http://{etcd_ip(i)}:{ETCD_PORT}" for i in range(1, members + 1)]


def keyd_ip(index: int) -> str:
    """Back-end address of keyd-<index> (1-based)."""
    if not 1 <= index <= MAX_KEYD:
        raise ValueError(f"keyd index {index} outside 1..{MAX_KEYD}")
    return f"10.30.0.{4 + index}"


def node_ip(index: int) -> str:
    """Back-end address of node-<index> (1-based)."""
    if not 1 <= index <= MAX_NODES:
        raise ValueError(f"node index {index} outside 1..{MAX_NODES}")
    return f"10.30.0.{10 + index}"


def node_ip6(index: int) -> str:
    """Back-end IPv6 address of node-<index> (1-based): the same host number as its IPv4
    address (fd00:30::11 for 10.30.0.11)."""
    return f"fd00:30::{node_ip(index).rsplit('.', 1)[1]}"


def client_ip(slot: int, behind_nat: bool) -> str:
    """Address of the client in `slot` (1-based): front network, or the NAT's inside network."""
    if not 1 <= slot <= MAX_CLIENTS:
        raise ValueError(f"client slot {slot} outside 1..{MAX_CLIENTS}")
    return f"198.51.100.{9 + slot}" if behind_nat else f"192.0.2.{99 + slot}"


NAT_OUTSIDE = "192.0.2.99"


def prefixlen(network: str) -> int:
    return ipaddress.ip_network(network).prefixlen
