"""Clients that move, and a second gateway to send them to (MOBIKE, redirect).

- `move_client`: the client's address on the front network changes (Wi-Fi to LTE): the new
  address is added, the old one removed. strongSwan sees the address go and, with MOBIKE,
  tells the gateway with UPDATE_SA_ADDRESSES; its IKE and Child SAs stay.
- `start_other_gateway`: a strongSwan charon at OTHER_GATEWAY on the front network, with
  the baseline gateway's connections (the lab's certificate, PSK and CA), for clients keyd
  redirects there (RFC 5685).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cluster.lab import addresses as A
from cluster.lab import netns, strongswan
from cluster.lab.errors import LabError

if TYPE_CHECKING:
    from cluster.lab.base import LabBase

#: front-network addresses the lab never gives a client: where clients move to
MOVE_ADDRESSES = ("192.0.2.250", "192.0.2.251", "192.0.2.252", "192.0.2.253")
#: the second gateway on the front network
OTHER_GATEWAY = "192.0.2.2"


def move_client(lab: LabBase, name: str, address: str) -> str:
    """Give client `name` the front-network `address` in place of its own; returns the old
    one. Only for clients on the front network (not behind the lab's NAT)."""
    rec = lab.state.clients.get(name)
    if rec is None:
        raise LabError(f"no client {name!r} in lab {lab.name!r}")
    if rec.behind_nat:
        raise LabError(f"client {name!r} is behind the NAT: it moves with the NAT")
    taken = {c.address for c in lab.state.clients.values()}
    if address in taken or address not in MOVE_ADDRESSES:
        raise LabError(f"{address} is not a free move address ({', '.join(MOVE_ADDRESSES)})")
    old = rec.address
    ns = rec.netns
    # the old address goes last: the new one must not go with it (a secondary address is
    # deleted with the primary unless promoted)
    netns.sysctl(ns, "net.ipv4.conf.eth0.promote_secondaries", "1")
    netns.address(ns, "eth0", f"{address}/{A.prefixlen(A.FRONT_NETWORK)}")
    netns.in_ns(ns, ["ip", "addr", "del", f"{old}/{A.prefixlen(A.FRONT_NETWORK)}",
                     "dev", "eth0"])
    netns.route(ns, "default", "via", A.FRONT_ROUTER, "src", address)
    rec.address = address
    return old


def start_other_gateway(lab: LabBase) -> int:
    """A charon responder at OTHER_GATEWAY (namespace `gw2`); returns its PID."""
    if "gateway-2" in lab.state.processes and lab.state.processes["gateway-2"].alive():
        return lab.state.processes["gateway-2"].pid
    ns = lab._add_ns("gw2")
    netns.veth(lab.ns("router"), "gw2", ns, "eth0")
    netns.enslave(lab.ns("router"), "gw2", "br-front")
    netns.address(ns, "eth0", f"{OTHER_GATEWAY}/{A.prefixlen(A.FRONT_NETWORK)}")
    netns.route(ns, "default", "via", A.FRONT_ROUTER)
    # kernel-libipsec routes a client's virtual IP with a source address from the local
    # traffic selector (as for the baseline gateway)
    netns.address(ns, "lo", f"{A.GATEWAY_INSIDE}/32")
    conf_dir = lab.dir / "gateway-2"
    conf_dir.mkdir(exist_ok=True)
    (conf_dir / "strongswan.conf").write_text(
        strongswan.strongswan_conf(lab.dir / "logs" / "gateway-2-charon.log"))
    swanctl_conf = strongswan.swanctl_dir(conf_dir, strongswan.gateway_swanctl_conf(
        lab.pki.psk(), lab.pki.cert("gateway"), lab.pki.ca_cert, local_addr=OTHER_GATEWAY),
        lab.pki.key("gateway"))
    rec = lab._spawn("gateway-2", strongswan.charon_argv(ns, conf_dir / "strongswan.conf"), ns)
    strongswan.wait_vici(rec.pid)
    strongswan.load(rec.pid, swanctl_conf)
    return rec.pid
