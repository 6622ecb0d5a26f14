"""Node agents with a real etcd and scapy as the client: forwarding, hand-off, fencing."""

from __future__ import annotations

import os

from conftest import SERVER, SPI_IN, VIRTUAL_IP, NodeLab
from scapy.layers.inet import ICMP, IP
from tests_node_helpers import wait_until


def test_ping_through_one_node(node_lab: NodeLab) -> None:
    lab = node_lab
    lab.start_node("node-1")
    record = lab.child_sa()
    lab.store.put(record)
    lab.assign("node-1", 1)
    lab.steer("node-1")
    client = lab.client(record)
    got = None
    assert wait_until(lambda: (got := client.ping(1.0)) is not None, 15), lab.log("node-1")
    got = client.ping()
    assert got is not None
    esp_seq, inner = got
    reply = IP(inner)
    assert reply.src == SERVER and reply.dst == VIRTUAL_IP and reply[ICMP].type == 0
    m = lab.metrics("node-1")
    assert m['ipsec_cluster_node_sas_installed'] == 1
    assert m['ipsec_cluster_node_packets_total{direction="in"}'] >= 2
    assert m['ipsec_cluster_node_packets_total{direction="out"}'] >= 2
    assert os.path.exists(lab.tmp / "node-1.log")
    assert SPI_IN
