"""Health probe codec and the damped tracker, on a virtual clock."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.probe import ProbeError, pull_probe, pull_reply, push_probe, push_reply
from sprayer.health import HealthTracker


@given(st.binary(min_size=8, max_size=8), st.booleans(),
       st.text(min_size=1, max_size=40).filter(lambda s: "\x00" not in s))
def test_reply_roundtrip(nonce: bytes, draining: bool, node_id: str) -> None:
    r = pull_reply(push_reply(nonce, draining, node_id))
    assert (r.nonce, r.draining, r.node_id) == (nonce, draining, node_id)
    assert pull_probe(push_probe(nonce)) == nonce


@given(st.binary(max_size=40))
def test_junk_is_a_remote_error_never_a_crash(data: bytes) -> None:
    for pull in (pull_reply, pull_probe):
        with contextlib.suppress(ProbeError):
            pull(data)


def test_bad_state_byte() -> None:
    with pytest.raises(ProbeError):
        pull_reply(b"IPSC-ALIVE" + b"\x00" * 8 + b"Xnode-1")


def test_down_after_three_misses_up_after_rise_and_hold_down() -> None:
    h = HealthTracker(misses=3, rise=3, hold_down_s=1.0)
    h.add("n1")
    t = 0.0
    for _ in range(2):
        t += 0.1
        h.missed("n1", t)
    assert h.alive("n1")
    h.answered("n1", t)  # an answer resets the count
    for _ in range(2):
        t += 0.1
        h.missed("n1", t)
    assert h.alive("n1")
    t += 0.1
    h.missed("n1", t)
    assert not h.alive("n1")
    down = t
    for _ in range(5):  # answers come back at once, but hold-down is 1 s
        t += 0.1
        h.answered("n1", t)
    assert not h.alive("n1")
    t = down + 1.0
    h.answered("n1", t)
    assert h.alive("n1")


def test_flapping_node_is_held_down_longer_each_time() -> None:
    h = HealthTracker(misses=1, rise=1, hold_down_s=1.0, max_hold_down_s=8.0)
    h.add("n1")
    holds = []
    t = 0.0
    for _ in range(5):
        h.missed("n1", t)
        down = t
        while not h.alive("n1"):
            t += 0.25  # exact in binary floating point
            h.answered("n1", t)
        holds.append(t - down)
        t += 0.25
    assert holds == [1.0, 2.0, 4.0, 8.0, 8.0]


def test_lease_loss_is_immediate_and_unknown_nodes_are_dead() -> None:
    h = HealthTracker()
    h.add("n1")
    h.answered("n1", 0.0, draining=True)
    assert h.alive("n1") and h.draining("n1")
    h.lease_lost("n1", 0.1)
    assert not h.alive("n1")
    assert not h.alive("ghost")
    h.answered("ghost", 0.2)
    assert h.nodes() == []


def test_node_back_after_lease_loss_comes_through_the_damping() -> None:
    # cut off: probes missed, then the lease lost; back with a new lease at once
    h = HealthTracker(misses=3, rise=3, hold_down_s=1.0)
    h.add("n1", 0.0)
    t = 0.0
    for _ in range(3):
        t += 0.1
        h.missed("n1", t)
    down = t
    h.lease_lost("n1", 3.0)
    h.add("n1", 3.1)
    assert h.nodes() == ["n1"]
    assert not h.alive("n1"), "a node back after losing its lease was presumed alive"
    h.answered("n1", 3.1)
    h.answered("n1", 3.15)
    assert not h.alive("n1")
    h.answered("n1", 3.2)   # third answer, and more than the hold-down since it went down
    assert h.alive("n1") and down + 1.0 <= 3.2


def test_lease_lost_while_alive_then_back_is_held_down() -> None:
    h = HealthTracker(misses=3, rise=1, hold_down_s=1.0)
    h.add("n1", 0.0)
    h.lease_lost("n1", 5.0)
    h.add("n1", 5.1)
    h.answered("n1", 5.2)
    assert not h.alive("n1")   # hold-down: down at 5.0, up at 6.0 at the earliest
    h.answered("n1", 6.0)
    assert h.alive("n1")


def test_a_node_gone_longer_than_the_flap_window_is_new() -> None:
    h = HealthTracker(flap_window_s=120.0)
    h.add("n1", 0.0)
    h.lease_lost("n1", 1.0)
    h.add("n1", 200.0)
    assert h.alive("n1")
