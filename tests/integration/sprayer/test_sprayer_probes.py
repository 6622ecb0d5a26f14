"""Probes judged only for what the sprayer could read: a stalled sprayer loop must not blame
the nodes, a node that really stops answering is still down after 3 missed rounds.

Real UDP on loopback: the sprayer's prober against real health responders
(cluster.probe.HealthResponder, the node side of the probe); the daemon part runs on the
session's etcd. No timed assertions: rounds are counted, waits are generous.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from test_sprayer_daemon import child, wait

from cluster.probe import HealthResponder
from cluster.store.client import Store
from cluster.store.membership import Membership
from cluster.store.records import Assignment, NodeRecord
from sprayer.daemon import Prober, Sprayer
from sprayer.health import HealthTracker
from sprayer.settings import SprayerSettings

INTERVAL_S = 0.1


def responder(node_id: str) -> HealthResponder:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    r = HealthResponder(sock, node_id)
    r.start()
    return r


@pytest.fixture
def prober() -> Iterator[Prober]:
    p = Prober(INTERVAL_S)
    yield p
    p.close()


def test_answers_queued_during_a_stall_are_read_before_judging(prober: Prober) -> None:
    """The loop stalls 0.5 s after each round (rounds on time by the clock the prober is
    given, so only reading the queued answers keeps the node up)."""
    node = responder("node-1")
    try:
        target = {"node-1": node.sock.getsockname()}
        health = HealthTracker(misses=3)
        health.add("node-1")
        for i in range(8):
            assert prober.round(target, health, now=i * INTERVAL_S, now_m=i * INTERVAL_S)
            time.sleep(0.5)     # the stall: the answer arrives and waits in the socket
        assert health.alive("node-1")
        assert prober.late_rounds == 0 and prober.dropped == 0
        assert node.dropped == 0
    finally:
        node.stop()
        node.sock.close()


def test_late_rounds_judge_nothing_and_a_silent_node_is_down_after_3_rounds(
        prober: Prober) -> None:
    node = responder("node-1")
    target = {"node-1": node.sock.getsockname()}
    node.stop()
    node.sock.close()           # it never answers again
    health = HealthTracker(misses=3)
    health.add("node-1")
    t = 0.0
    prober.round(target, health, now=t, now_m=t)
    for _ in range(5):          # each round runs 0.5 s after the last: the sprayer stalled
        t += 0.5
        assert not prober.round(target, health, now=t, now_m=t)
    assert prober.late_rounds == 5
    assert health.alive("node-1")
    for _ in range(2):          # on time again: two misses
        t += INTERVAL_S
        assert prober.round(target, health, now=t, now_m=t)
    assert health.alive("node-1")
    t += INTERVAL_S
    prober.round(target, health, now=t, now_m=t)
    assert not health.alive("node-1")


def test_replies_are_read_when_a_watch_event_wakes_the_loop_too(prober: Prober) -> None:
    """A reply and a wake-up ready at once: the reply is handled then, not left waiting."""
    node = responder("node-1")
    wake_r, wake_w = socket.socketpair()
    try:
        # down now; one answer brings it back (no rise, no hold-down): the answer's witness
        health = HealthTracker(misses=1, rise=1, hold_down_s=0.0)
        health.add("node-1")
        health.missed("node-1", 0.0)
        prober.round({"node-1": node.sock.getsockname()}, health, now=0.0, now_m=0.0)
        time.sleep(0.3)         # the answer is queued
        wake_w.send(b"\0")
        prober.receive(1.0, health, lambda: 0.05, wake=wake_r)
        assert health.alive("node-1")
    finally:
        wake_r.close()
        wake_w.close()
        node.stop()
        node.sock.close()


# -- the daemon on a real etcd -----------------------------------------------------------------

def test_a_mass_assignment_blames_no_node_and_a_dead_one_still_goes_down(
        store: Store) -> None:
    """3,000 clients arrive at once: the leader writes 3,000 assignments in one tick, its own
    writes stream back as watch events. No node may be declared down meanwhile; then node-1
    stops answering and only its clients fail over."""
    nodes = {n: responder(n) for n in ("node-1", "node-2")}
    members = []
    for n, r in nodes.items():
        rec = NodeRecord(n, "127.0.0.1", 100, "ready", r.sock.getsockname()[1], "test",
                         time.time())
        m = Membership(store, rec, 3, lambda ev: None)
        m.start()
        members.append(m)
    settings = SprayerSettings(id="sprayer-probes", keyd=["10.30.9.5"], lease_ttl_s=3,
                               auto_rebalance=False)
    sprayer = Sprayer(settings, store, None)
    stop = threading.Event()
    sprayer.start()
    loop = threading.Thread(target=sprayer.run, args=(stop,), daemon=True)
    loop.start()

    def failovers() -> float:
        return sprayer.metrics.registry.get_sample_value(
            "sprayer_moves_total", {"kind": "Failover"}) or 0.0

    def owners() -> dict[str, str]:
        return {v.record.ike_sa_id: v.record.node for v in store.list(Assignment).items}
    try:
        wait(lambda: sprayer.leadership.is_leader and sprayer.view.ready, what="a leader")
        clients = [child(i) for i in range(3000)]
        store.put_many(clients)
        wait(lambda: len(owners()) == len(clients), timeout_s=120, what="3,000 assigned")
        wait(lambda: all(rev >= 0 for _, rev in sprayer.view.assigns.values()),
             timeout_s=60, what="the writes seen back")
        print(f"probe rounds late during the mass write: {sprayer.prober.late_rounds}")
        assert failovers() == 0
        assert all(sprayer.health.alive(n) for n in nodes)
        on1 = {k for k, n in owners().items() if n == "node-1"}
        assert on1 and len(on1) < len(clients)

        nodes["node-1"].stop()
        nodes["node-1"].sock.close()
        wait(lambda: not sprayer.health.alive("node-1"), what="node-1 down")
        wait(lambda: "node-1" not in owners().values(), timeout_s=120, what="failover")
        assert failovers() == len(on1)
        assert sprayer.health.alive("node-2")
    finally:
        stop.set()
        loop.join(10)
        sprayer.stop()
        for r in nodes.values():
            r.stop()
            r.sock.close()
        for m in members:
            m.stop(revoke=True)
