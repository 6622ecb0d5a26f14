"""Changes to a running lab that failover scenarios need: a node that joins, a standby
sprayer, a node's back-end link cut and restored, and a count of the ESP a member sends.

Each works on an existing `Lab` under its lock (like `Lab.add_client`), records what it starts
so that `lab down` stops it, and leaves `lab.py`'s own life cycle alone.
"""

from __future__ import annotations

import functools
import json
import re

from cluster.lab import addresses as A
from cluster.lab import daemons, netns, topology
from cluster.lab.base import _mutating
from cluster.lab.errors import LabError
from cluster.lab.lab import Lab

CUT_TABLE = "lab_cut"          # drops everything on a member's eth0 while it exists
COUNT_TABLE = "lab_esp_count"  # counts the ESP-in-UDP a member sends on eth0
STANDBY_METRICS = "127.0.0.1:9414"


@_mutating
def add_node(lab: Lab, timeout_s: float = 30.0) -> str:
    """A further node (node-<N+1>) on the back-end network, started and ready in etcd; the
    sprayer learns of it from etcd as of any node. Returns its name."""
    if lab.state.gateway != "cluster":
        raise LabError("nodes need the cluster gateway")
    index = lab.state.nodes + 1
    if index > A.MAX_NODES:
        raise LabError(f"the lab holds at most {A.MAX_NODES} nodes")
    role = f"node-{index}"
    ns = topology.back_host(lab._add_ns, lab.ns("router"), role, A.node_ip(index), vip=True)
    common = daemons.Common(lab.name, lab.pki.data_key_file, lab.dir / "logs")
    path = lab.dir / "config" / f"{role}.toml"
    path.write_text(daemons.node_config(common, index, lab.state.node_dataplane))
    lab.state.nodes = index
    lab._spawn(role, netns.exec_argv(ns, daemons.NODE.argv(path)), ns)
    lab._wait(f"{role} listening on {A.VIP}:4500 and ready in etcd",
              functools.partial(lab._registered, role, "nodes", 4500), timeout_s)
    return role


@_mutating
def start_standby_sprayer(lab: Lab, sprayer_id: str = "sprayer-2") -> int:
    """A second sprayer in the router's namespace with the first one's configuration but its
    own id and metrics port: it stands by until the leader's key is gone. Recorded as role
    `sprayer_id` (so `lab.kill(sprayer_id)` and `lab down` know it). Returns its PID."""
    source = lab.dir / "config" / "sprayer.toml"
    if not source.exists():
        raise LabError("the lab runs no sprayer")
    text = re.sub(r'(?m)^id = ".*"$', f'id = "{sprayer_id}"', source.read_text())
    text = re.sub(r'(?m)^listen = ".*"$', f'listen = "{STANDBY_METRICS}"', text)
    path = lab.dir / "config" / f"{sprayer_id}.toml"
    path.write_text(text)
    rec = lab._spawn(sprayer_id, netns.exec_argv(lab.ns("router"), daemons.SPRAYER.argv(path)),
                     lab.ns("router"))
    return rec.pid


def cut_link(lab: Lab, member: str) -> None:
    """Drop every packet on member's back-end link (eth0), both ways, forwarded or local: the
    member is partitioned from etcd, the sprayer, keyd and the server. ESP it tries to send
    still shows in `esp_sent` (that count runs before the drop)."""
    ns = lab.members()[member]
    netns.nft(ns, (
        f"table inet {CUT_TABLE} {{\n"
        "  chain in {\n    type filter hook prerouting priority -300; policy accept;\n"
        '    iifname "eth0" drop\n  }\n'
        "  chain out {\n    type filter hook postrouting priority 300; policy accept;\n"
        '    oifname "eth0" drop\n  }\n'
        "}\n"))


def restore_link(lab: Lab, member: str) -> None:
    """Undo `cut_link`."""
    netns.in_ns(lab.members()[member], ["nft", "delete", "table", "inet", CUT_TABLE])


def link_cut(lab: Lab, member: str) -> bool:
    out = netns.in_ns(lab.members()[member], ["nft", "list", "tables"], check=False).stdout
    return f"inet {CUT_TABLE}" in out


def count_esp_sent(lab: Lab, member: str) -> None:
    """Start counting the ESP-in-UDP (source port 4500, non-ESP marker excluded) that member
    sends on eth0, before any cut drops it; `esp_sent` reads the count."""
    ns = lab.members()[member]
    netns.in_ns(ns, ["nft", "delete", "table", "inet", COUNT_TABLE], check=False)
    netns.nft(ns, (
        f"table inet {COUNT_TABLE} {{\n"
        "  counter esp_out {\n  }\n"
        "  chain out {\n    type filter hook output priority -300; policy accept;\n"
        '    oifname "eth0" udp sport 4500 @th,64,32 != 0x0 counter name "esp_out"\n  }\n'
        "}\n"))


def esp_sent(lab: Lab, member: str) -> int:
    """Packets counted since `count_esp_sent`."""
    out = netns.in_ns(lab.members()[member],
                      ["nft", "-j", "list", "counter", "inet", COUNT_TABLE, "esp_out"]).stdout
    for item in json.loads(out).get("nftables", []):
        if "counter" in item:
            return int(item["counter"]["packets"])
    raise LabError(f"no ESP counter in {member}")
