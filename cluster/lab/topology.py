"""The lab's networks: namespaces, bridges, veths, addresses, routes and filters.

Free functions over namespace names; `add_ns(role)` creates (and records) the namespace of a
role and returns its name, so everything made here is known to `lab down`.
"""

from __future__ import annotations

from collections.abc import Callable

from cluster.lab import addresses as A
from cluster.lab import netns

AddNs = Callable[[str], str]

# The protected network is reached through a gateway only: the router forwards nothing from
# the front network (clients, the NAT) to it directly.
_ROUTER_FILTER = (
    "table inet lab_filter {\n"
    "  chain forward {\n"
    "    type filter hook forward priority filter; policy accept;\n"
    '    iifname "br-front" oifname "prot" counter drop\n'
    "  }\n"
    "}\n")
_MASQUERADE = (
    "table ip lab_nat {\n"
    "  chain postrouting {\n"
    "    type nat hook postrouting priority srcnat; policy accept;\n"
    '    oifname "out" masquerade\n'
    "  }\n"
    "}\n")


def _no_rp_filter(ns: str) -> None:
    # Packets for the VIP and replies from it cross interfaces asymmetrically on purpose.
    for key in ("all", "default"):
        netns.sysctl(ns, f"net.ipv4.conf.{key}.rp_filter", "0")


def core(add_ns: AddNs, keyd: int, nodes: int, baseline: bool, etcd_members: int = 1) -> None:
    """Router, server, etcd (one namespace holding each member's address), keyd-1..keyd and
    node-1..nodes, wired and routed."""
    router = add_ns("router")
    netns.sysctl(router, "net.ipv4.ip_forward", "1")
    _no_rp_filter(router)
    netns.bridge(router, "br-front")
    netns.address(router, "br-front", f"{A.FRONT_ROUTER}/24")
    netns.bridge(router, "br-back")
    netns.address(router, "br-back", f"{A.BACK_ROUTER}/24")

    server = add_ns("server")
    netns.veth(router, "prot", server, "eth0")
    netns.address(router, "prot", f"{A.PROTECTED_ROUTER}/24")
    netns.address(server, "eth0", f"{A.SERVER_IP}/24")
    netns.route(server, "default", "via", A.PROTECTED_ROUTER)
    # inner IPv6: the protected network and the back end (the router returns clients' IPv6
    # traffic to their nodes there); outer traffic stays IPv4
    netns.sysctl(router, "net.ipv6.conf.all.forwarding", "1")
    netns.address6(router, "prot", f"{A.PROTECTED_ROUTER6}/64")
    netns.address6(server, "eth0", f"{A.SERVER_IP6}/64")
    netns.route(server, "::/0", "via", A.PROTECTED_ROUTER6)
    netns.address6(router, "br-back", f"{A.BACK_ROUTER6}/64")
    netns.nft(router, _ROUTER_FILTER)

    etcd = back_host(add_ns, router, "etcd", A.etcd_ip(1), vip=False)
    for i in range(2, etcd_members + 1):
        netns.address(etcd, "eth0", f"{A.etcd_ip(i)}/24")
    for i in range(1, keyd + 1):
        back_host(add_ns, router, f"keyd-{i}", A.keyd_ip(i), vip=True)
    for i in range(1, nodes + 1):
        node = back_host(add_ns, router, f"node-{i}", A.node_ip(i), vip=True)
        netns.address6(node, "eth0", f"{A.node_ip6(i)}/64")
        netns.route(node, "::/0", "via", A.BACK_ROUTER6)
        netns.sysctl(node, "net.ipv6.conf.all.forwarding", "1")
    # Until the sprayer steers by mark, the VIP is routed to keyd-1 so IKE works.
    netns.route(router, f"{A.VIP}/32", "via", A.keyd_ip(1))
    if baseline:
        netns.route(router, A.POOL, "via", A.keyd_ip(1))


def back_host(add_ns: AddNs, router: str, role: str, ip: str, vip: bool) -> str:
    """A namespace on the back-end network; with vip, holding the VIP on its loopback."""
    ns = add_ns(role)
    link = f"b-{role}"[:15]
    netns.veth(router, link, ns, "eth0")
    netns.enslave(router, link, "br-back")
    netns.address(ns, "eth0", f"{ip}/24")
    netns.route(ns, "default", "via", A.BACK_ROUTER)
    if vip:
        netns.address(ns, "lo", f"{A.VIP}/32")
        netns.sysctl(ns, "net.ipv4.ip_forward", "1")
        _no_rp_filter(ns)
    return ns


def nat(add_ns: AddNs, router: str) -> str:
    """The NAT namespace: outside on the front network, masquerading 198.51.100.0/24."""
    ns = add_ns("nat")
    netns.veth(router, "nat", ns, "out")
    netns.enslave(router, "nat", "br-front")
    netns.address(ns, "out", f"{A.NAT_OUTSIDE}/24")
    netns.route(ns, "default", "via", A.FRONT_ROUTER)
    netns.bridge(ns, "br-in")
    netns.address(ns, "br-in", f"{A.NAT_INSIDE}/24")
    netns.sysctl(ns, "net.ipv4.ip_forward", "1")
    netns.nft(ns, _MASQUERADE)
    return ns


def unwire_client(upstream: str, slot: int) -> None:
    """Remove the upstream end of a client's veth now: the kernel removes it with the client's
    namespace only some time after that namespace is deleted, and a new client in the same
    slot needs the name at once."""
    netns.in_ns(upstream, ["ip", "link", "del", f"c{slot}"], check=False)


def client(ns: str, upstream: str, slot: int, address: str, behind_nat: bool) -> None:
    """Wire client namespace ns to the front bridge (or the NAT's inside bridge)."""
    bridge_name, gateway = ("br-in", A.NAT_INSIDE) if behind_nat else \
        ("br-front", A.FRONT_ROUTER)
    link = f"c{slot}"
    netns.veth(upstream, link, ns, "eth0")
    netns.enslave(upstream, link, bridge_name)
    netns.address(ns, "eth0", f"{address}/24")
    netns.route(ns, "default", "via", gateway)
