"""The patent's mid-negotiation move (issue 13, item 4): a client's IKE_SA_INIT goes through
the sprayer to keyd, then its path changes and its IKE_AUTH reaches a node instead; the node
relays it to keyd (cluster/node/relay.py), keyd answers it the way the client's last message
came (to the address and port it came from, from the VIP), and the client establishes.

The path change is a routing change on the router, as a client's packets that take another
way through a network: a rule ahead of the sprayer's sends the client's UDP 4500 (where it
floats for IKE_AUTH, RFC 7296 §2.23) to node-1's back-end address, whatever the sprayer's
mark says. Counters on the router show which way each message went. With IKE fragmentation
(`fragmentation = force`), every fragment of the IKE_AUTH takes the detour, node-1 relays each
one, and keyd reassembles them.
"""

from __future__ import annotations

import re
import socket
import time

import pytest
from test_ike_fragmentation import start_fragmenting_client

from cluster.lab import addresses as A
from cluster.lab.lab import Lab

DETOUR_TABLE = 4500
DETOUR_PREF = 900  # ahead of the sprayer's fwmark rules (sprayer/routes.py, 1000)


def _counters(lab: Lab) -> dict[str, int]:
    out = lab.run("router", ["nft", "list", "table", "ip", "e2e_move"], check=True).stdout
    return {m.group(2): int(m.group(1))
            for m in re.finditer(r"counter packets (\d+) bytes \d+ comment \"(\w+)\"", out)}


def _node_relayed(lab: Lab) -> float:
    r = lab.run("node-1", ["curl", "-sf", "--max-time", "5", "http://127.0.0.1:9411/metrics"],
                check=True)
    m = re.search(r"^ipsec_cluster_node_ike_relayed_total (\S+)$", r.stdout, re.M)
    assert m, r.stdout[-500:]
    return float(m.group(1))


def _detour(lab: Lab, client_ip: str) -> None:
    """The client's UDP 4500 to node-1 (ahead of the sprayer), and counters on the router
    that tell which way each of its IKE messages went and how keyd's answers came back."""
    keyd, node = A.keyd_ip(1), A.node_ip(1)
    lab.run("router", ["ip", "route", "add", f"{A.VIP}/32", "via", node, "table",
                       str(DETOUR_TABLE)], check=True)
    # UDP by number: `ip` looks names up in /etc/protocols, which a minimal Debian lacks
    lab.run("router", ["ip", "rule", "add", "pref", str(DETOUR_PREF), "from", client_ip,
                       "ipproto", str(socket.IPPROTO_UDP), "dport", "4500", "lookup",
                       str(DETOUR_TABLE)], check=True)
    rules = lab.dir / "e2e-move.nft"
    to_vip = f"ip saddr {client_ip} ip daddr {A.VIP}"
    non_esp = "@th,64,32 0"  # the non-ESP marker: IKE on 4500 (RFC 3948 §2.2)
    watch = [
        f'{to_vip} udp dport 500 rt ip nexthop {keyd} counter comment "init_to_keyd"',
        f'{to_vip} udp dport 500 rt ip nexthop {node} counter comment "init_to_node"',
        f'{to_vip} udp dport 4500 {non_esp} rt ip nexthop {node} counter comment "ike_to_node"',
        f'{to_vip} udp dport 4500 {non_esp} rt ip nexthop {keyd} counter comment "ike_to_keyd"',
        f"ip saddr {A.VIP} ip daddr {client_ip} udp sport 4500 udp dport 4500 {non_esp} "
        f'counter comment "answers_4500"',
    ]
    rules.write_text("table ip e2e_move {\n  chain watch {\n"
                     "    type filter hook forward priority 0; policy accept;\n"
                     + "".join(f"    {w}\n" for w in watch) + "  }\n}\n")
    lab.run("router", ["nft", "-f", str(rules)], check=True)


@pytest.mark.lab(nodes=1, keyd=1)
def test_ike_auth_reaching_a_node_is_relayed_and_the_client_establishes(lab: Lab) -> None:
    client_ip = A.client_ip(1, False)  # the first client's address
    _detour(lab, client_ip)
    relayed_before = _node_relayed(lab)

    rec = lab.add_client("mover")  # connects: IKE_SA_INIT, then IKE_AUTH on 4500
    assert rec.address == client_ip
    (sa,) = lab.client_sas("mover")
    assert sa.state == "ESTABLISHED" and sa.virtual_ip
    c = _counters(lab)
    assert c["init_to_keyd"] >= 1 and c["init_to_node"] == 0, c
    assert c["ike_to_node"] >= 1 and c["ike_to_keyd"] == 0, c
    assert c["answers_4500"] >= 1, c
    assert _node_relayed(lab) - relayed_before >= c["ike_to_node"] >= 1
    log = (lab.dir / "logs" / "client-mover-charon.log").read_text()
    assert re.search(rf"received packet: from {re.escape(A.VIP)}\[4500\] to "
                     rf"{re.escape(client_ip)}\[4500\]", log), log
    assert lab.ping("mover")

    # later exchanges keep to the detour: an IKE rekey, answered through the node's relay
    before = _counters(lab)["ike_to_node"]
    lab.run("mover", ["swanctl", "--rekey", "--ike", "lab"], check=True)
    deadline = time.monotonic() + 30
    while True:
        now = [s for s in lab.client_sas("mover") if s.state == "ESTABLISHED"]
        if len(now) == 1 and (now[0].spi_i, now[0].spi_r) != (sa.spi_i, sa.spi_r):
            break
        assert time.monotonic() < deadline, f"the IKE rekey did not complete: {now}"
        time.sleep(0.2)
    assert _counters(lab)["ike_to_node"] > before
    assert _counters(lab)["ike_to_keyd"] == 0
    assert lab.ping("mover")


@pytest.mark.lab(nodes=1, keyd=1)
def test_fragmented_ike_auth_relayed_by_a_node_is_reassembled(lab: Lab) -> None:
    """The same move with IKE fragmentation (RFC 7383): every fragment of the client's
    IKE_AUTH reaches node-1, which relays each; keyd reassembles them."""
    client_ip = A.client_ip(1, False)
    _detour(lab, client_ip)
    relayed_before = _node_relayed(lab)
    rec = lab.add_client("mover", auth="cert", ike=False)
    assert rec.address == client_ip
    cert, key = lab.pki.issue("client-mover", [rec.identity])
    start_fragmenting_client(lab, "mover", rec.identity, lab.pki.ca_cert, cert, key)
    (sa,) = lab.client_sas("mover")
    assert sa.state == "ESTABLISHED" and sa.virtual_ip
    log = (lab.dir / "logs" / "client-mover-charon.log").read_text()
    m = re.search(r"splitting IKE message \(\d+ bytes\) into (\d+) fragments", log)
    assert m and int(m.group(1)) >= 2, log
    c = _counters(lab)
    assert c["init_to_keyd"] >= 1 and c["init_to_node"] == 0, c
    assert c["ike_to_node"] >= int(m.group(1)) and c["ike_to_keyd"] == 0, c
    assert _node_relayed(lab) - relayed_before >= int(m.group(1))
    assert lab.ping("mover")
