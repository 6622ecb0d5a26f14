"""A planned hand-off with the router still steering the client to the old owner: the old
owner forwards the client's return traffic to the new one, which answers with the exact
counters; the old owner writes its final record only once the new owner holds and routes the
client's traffic (READY), or after a wait without it; traffic counts travel in the seq records
across owners; a subnet selector is routed by longest prefix."""

from __future__ import annotations

import dataclasses
import time

from node_lab import NODE_IPS, SERVER, VIP, VIRTUAL_IP, NodeLab, socket_in
from scapy.layers.inet import ICMP, IP, UDP
from scapy.packet import raw
from test_node_datapath import ping_until, pings, up
from tests_node_helpers import wait_until

from cluster.lab import netns
from cluster.node.handoff import READY
from cluster.store import NodeRecord

OUT = 'ipsec_cluster_node_packets_total{direction="out"}'
SITE = "10.50.0.0/24"
NOT_OWNER = 'ipsec_cluster_node_drops_total{reason="not_owner"}'
NO_READY = "ipsec_cluster_node_finals_without_ready_total"


def test_old_owner_forwards_return_traffic_until_the_router_flips(node_lab: NodeLab) -> None:
    lab = node_lab
    _, client = up(lab, "node-1", "node-2")
    last = pings(client, 5)
    sent_by_1 = lab.metrics("node-1")[OUT]
    dropped_by_1 = lab.metrics("node-1").get(NOT_OWNER, 0)
    lab.assign("node-2", 2, "handoff", "node-1")
    assert wait_until(lambda: (s := lab.seq()) is not None and s.kind == "final", 5)
    # nothing flipped: the client's ESP and the server's replies still go to node-1
    assert wait_until(lambda: "via" in lab.in_ns("n1", "ip", "route", "show", VIRTUAL_IP), 5)
    got = ping_until(client, 10)
    assert got[0] == last + 1  # sent by node-2 from the final counters: exact, no jump
    for _ in range(3):
        nxt = client.ping()
        assert nxt is not None  # every ping answered while the router still steers to node-1
        assert nxt[0] == got[0] + 1
        got = nxt
    m1 = lab.metrics("node-1")
    assert m1[OUT] == sent_by_1  # the old owner sent nothing after its final record
    assert m1.get(NOT_OWNER, 0) == dropped_by_1  # and dropped nothing: it forwarded
    assert lab.metrics("node-2")[OUT] >= 4
    # the forwarding route goes away by itself (the router has flipped long before)
    assert wait_until(
        lambda: VIRTUAL_IP not in lab.in_ns("n1", "ip", "route", "show", VIRTUAL_IP), 15)


def test_the_final_record_follows_the_new_owners_route(node_lab: NodeLab) -> None:
    """Once the final record is in etcd the router may flip and the old owner forwards: the
    new owner's route to its TUN must exist by then, or the client's return traffic loops
    between the nodes and the router until its TTL runs out. The new owner says READY only
    with its hold and route in place, and the old owner writes its final record on that."""
    lab = node_lab
    # the old owner waits long for READY, so a final written without it (counted) means
    # READY was not sent, not that a loaded machine sent it late
    lab.start_node("node-1", ready_wait_ms=10_000)
    _, client = up(lab, "node-2")
    assert client.ping() is not None
    # junk on the old owner's health port changes nothing
    sock = socket_in(lab.ns("cli"))
    for junk in (READY, READY + b"\x01" + bytes(8) + b"\x05abc", b"\x00" * 40):
        sock.sendto(junk, (NODE_IPS["node-1"], 4501))
    sock.close()
    lab.assign("node-2", 2, "handoff", "node-1")
    assert wait_until(lambda: (s := lab.seq()) is not None and s.kind == "final", 5)
    assert "dev ipsc0" in lab.in_ns("n2", "ip", "route", "show", VIRTUAL_IP)
    assert lab.metrics("node-1")[NO_READY] == 0
    lab.steer("node-2")
    assert ping_until(client, 10) is not None


def test_without_ready_the_final_is_written_after_a_wait(node_lab: NodeLab) -> None:
    """A new owner that never says READY (an older version, or a lost datagram every time):
    the old owner writes its final record anyway, after the wait, and counts it."""
    lab = node_lab
    _, client = up(lab, "node-1")
    assert client.ping() is not None
    # node-2 is known (its record) but runs no agent: nobody sends READY
    lab.store.put(NodeRecord("node-2", NODE_IPS["node-2"], 100, "ready", 4501, "0.1.0", 0.0))
    time.sleep(0.5)  # node-1 learns of node-2 from its watch
    lab.assign("node-2", 2, "handoff", "node-1")
    assert wait_until(lambda: (s := lab.seq()) is not None and s.kind == "final", 5)
    assert wait_until(lambda: lab.metrics("node-1").get(NO_READY) == 1, 5)
    assert "no READY from the new owner" in lab.log("node-1")


def test_traffic_counts_are_published_and_carried_over(node_lab: NodeLab) -> None:
    lab = node_lab
    _, client = up(lab, "node-1", "node-2")
    for _ in range(6):
        assert client.ping() is not None
    # the owner checkpoints within T (the lab's checkpoint_ms) with its traffic
    assert wait_until(lambda: (s := lab.seq()) is not None and (s.packets_out or 0) >= 6, 10)
    s = lab.seq()
    assert s is not None and s.packets_in is not None and s.bytes_in is not None
    assert s.packets_in >= 6 and s.bytes_out is not None and s.bytes_out > 0
    assert s.packets_out is not None
    assert s.packets_out <= s.out_seq  # real counts, never above the sequence number
    lab.assign("node-2", 2, "handoff", "node-1")
    assert wait_until(lambda: (f := lab.seq()) is not None and f.kind == "final", 5)
    final = lab.seq()
    assert final is not None and final.packets_out is not None
    carried = final.packets_out
    assert carried >= 6
    lab.steer("node-2")
    lab.assign("node-2", 2, "active", "node-1")
    for _ in range(4):
        ping_until(client, 10)
    # node-2 counts on from node-1's final numbers
    assert wait_until(lambda: (c := lab.seq()) is not None and c.owner == "node-2"
                      and (c.packets_out or 0) >= carried + 4, 10), lab.seq()


def test_subnet_selector_is_routed_by_longest_prefix(node_lab: NodeLab) -> None:
    """A client without a virtual IP whose remote selector is a subnet (a site behind it):
    the node routes the subnet to its TUN and finds the SA by longest prefix."""
    lab = node_lab
    lab.start_node("node-1")
    record = dataclasses.replace(lab.child_sa(), virtual_ip=None, ts_remote=[SITE])
    lab.store.put(record)
    lab.assign("node-1", 1)
    lab.steer("node-1")
    netns.route(lab.ns("srv"), SITE, "via", NODE_IPS["node-1"])
    client = lab.client(record)
    client.inner_src = "10.50.0.5"
    assert wait_until(lambda: client.ping(1.0) is not None, 15), lab.log("node-1")
    assert "dev" in lab.in_ns("n1", "ip", "route", "show", SITE)
    client.inner_src = "10.51.0.5"  # outside the selector: dropped inbound, never answered
    assert client.ping(1.0) is None
    assert lab.metrics("node-1")['ipsec_cluster_node_drops_total{reason="selector"}'] >= 1


def test_a_late_packet_alone_reaches_the_checkpoint(node_lab: NodeLab) -> None:
    """An ESP packet that arrives after a later one changes only the replay bitmap: the
    owner still writes it (after T), so a new owner's window knows that number."""
    lab = node_lab
    _, client = up(lab, "node-1")
    early = raw(client.to_node.encrypt(IP(src=VIRTUAL_IP, dst=SERVER) / ICMP(seq=900)))
    late = raw(client.to_node.encrypt(IP(src=VIRTUAL_IP, dst=SERVER) / ICMP(seq=901)))
    client.sock.sendto(late[28:], (VIP, 4500))
    top = IP(late)[UDP].payload.seq
    assert wait_until(lambda: (s := lab.seq()) is not None and s.in_highest == top, 10)
    s = lab.seq()
    assert s is not None and not s.in_bitmap & 0b10  # top - 1 not seen yet
    client.sock.sendto(early[28:], (VIP, 4500))
    assert wait_until(lambda: (s := lab.seq()) is not None and s.in_bitmap & 0b10, 10), \
        lab.seq()
    assert lab.seq().in_highest == top  # type: ignore[union-attr]
