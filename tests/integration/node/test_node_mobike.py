"""A MOBIKE client's SA on the node agents (real etcd, scapy as the client): it moves by its
record only — authenticated ESP from elsewhere is not followed — and every node that holds
it learns the new address, so the node that takes it over after a failure sends there."""

from __future__ import annotations

import time
from dataclasses import replace

from node_lab import CLIENT, NodeLab, socket_in
from tests_node_helpers import wait_until

from cluster.lab import netns

MOVED = "10.30.0.8"   # the client's second address on the front network


def _reply_on(client: object, sock: object, timeout_s: float = 2.0) -> bool:
    """Whether an ESP packet arrives on `sock` (the client's socket at one address)."""
    client.sock = sock  # type: ignore[attr-defined]
    return client.receive(timeout_s) is not None  # type: ignore[attr-defined]


def test_a_mobike_sa_moves_by_its_record_and_the_next_owner_sends_there(
        node_lab: NodeLab) -> None:
    lab = node_lab
    lab.start_node("node-1")
    lab.start_node("node-2")
    record = replace(lab.child_sa(), mobike=True)
    lab.store.put(record)
    lab.assign("node-1", 1)
    lab.steer("node-1")
    client = lab.client(record)
    assert wait_until(lambda: client.ping(1.0) is not None, 15), lab.log("node-1")
    old = client.sock
    netns.address(lab.ns("cli"), "eth0", f"{MOVED}/24")
    moved = socket_in(lab.ns("cli"))
    moved.bind((MOVED, 4500))
    # the client sends from its new address before keyd wrote it (an unverified address):
    # the packet is delivered, the answer still goes to the address in the record
    client.sock = moved
    client.send_ping()
    assert _reply_on(client, old)
    assert not _reply_on(client, moved, 0.5)
    assert lab.metrics("node-1")["ipsec_cluster_node_rebinds_total"] == 0
    # keyd writes the new address (after its return routability check): the owner follows
    lab.store.put(replace(record, peer_addr=MOVED))
    client.sock = moved

    def answered_at_new_address() -> bool:
        client.send_ping()
        return _reply_on(client, moved, 0.5)

    assert wait_until(answered_at_new_address, 5)
    # answers to pings sent before the owner applied the record went to the old address:
    # read them now, so that only what the next owner sends counts below
    while _reply_on(client, old, 0.3):
        pass
    # the owner dies; node-2 had the SA with its new address all along
    lab.kill_node("node-1")
    lab.assign("node-2", 2, "active", "node-1")
    lab.steer("node-2")
    t0 = time.monotonic()
    client.sock = moved
    assert wait_until(lambda: client.ping(1.0) is not None, 15), lab.log("node-2")
    assert time.monotonic() - t0 < 15
    assert not _reply_on(client, old, 0.5)
    old.close()
    moved.close()
    assert CLIENT != MOVED
