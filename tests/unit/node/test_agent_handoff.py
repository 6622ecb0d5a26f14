"""The planned hand-off's READY message and the old owner's gate on its final record
(cluster.node.handoff): wire format, junk, and when a parked final record may be written."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.node.handoff import (
    READY,
    REMEMBER_S,
    FinalGate,
    HandoffError,
    Ready,
    is_ready_message,
    pull_ready,
    push_ready,
)

IKE = "3a45bccfb704780ce24444941d5d7708"


def test_ready_round_trips() -> None:
    msg = Ready(IKE, 7, "node-3")
    data = push_ready(msg)
    assert is_ready_message(data)
    assert pull_ready(data) == msg


@given(ike=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1,
                   max_size=255),
       node=st.text(min_size=1, max_size=60), epoch=st.integers(0, (1 << 64) - 1))
def test_any_valid_ready_round_trips(ike: str, node: str, epoch: int) -> None:
    msg = Ready(ike, epoch, node)
    if len(node.encode()) > 255:
        with pytest.raises(ValueError):
            push_ready(msg)
        return
    assert pull_ready(push_ready(msg)) == msg


@pytest.mark.parametrize("data", [
    b"", b"IPSC-PROBE12345678", READY, READY + b"\x02" + bytes(8) + b"\x01a\x01b",
    READY + b"\x01" + bytes(7), READY + b"\x01" + bytes(8) + b"\x00\x01b",
    READY + b"\x01" + bytes(8) + b"\x05abc", READY + b"\x01" + bytes(8) + b"\x01a\x01b!",
    READY + b"\x01" + bytes(8) + b"\x01\xff\x01b", READY + b"\x01" + bytes(8) + b"\x01a",
])
def test_junk_is_a_remote_error(data: bytes) -> None:
    with pytest.raises(HandoffError):
        pull_ready(data)


@given(st.binary(max_size=80))
def test_arbitrary_bytes_decode_exactly_or_are_refused(data: bytes) -> None:
    """No other exception escapes, and whatever decodes encodes back to the same bytes."""
    try:
        msg = pull_ready(READY + data)
    except HandoffError:
        return
    assert push_ready(msg) == READY + data


def test_a_final_waits_for_the_new_owners_ready() -> None:
    gate: FinalGate[str] = FinalGate(wait_s=0.5)
    assert gate.wait(IKE, 2, "node-3", "write", now=10.0)
    assert gate.due(10.4) == []
    assert gate.ready(Ready(IKE, 2, "node-1"), 10.41) is None   # not the new owner
    assert gate.ready(Ready(IKE, 1, "node-3"), 10.42) is None   # an older hand-off
    assert gate.ready(Ready(IKE, 2, "node-3"), 10.43) == "write"
    assert gate.due(11.0) == [] and gate.timeouts == 0


def test_without_ready_the_final_is_written_after_the_wait() -> None:
    gate: FinalGate[str] = FinalGate(wait_s=0.5)
    gate.wait(IKE, 2, "node-3", "write", now=10.0)
    assert gate.due(10.5) == ["write"]
    assert gate.timeouts == 1
    assert gate.ready(Ready(IKE, 2, "node-3"), 10.6) is None    # too late: written already


def test_a_ready_before_the_assignment_is_remembered_for_a_while() -> None:
    gate: FinalGate[str] = FinalGate()
    assert gate.ready(Ready(IKE, 2, "node-3"), 10.0) is None
    assert not gate.wait(IKE, 2, "node-3", "write", now=10.1)   # write at once
    assert not gate.waiting
    gate.ready(Ready(IKE, 3, "node-1"), 20.0)
    gate.due(20.0 + REMEMBER_S)                                 # forgotten
    assert gate.wait(IKE, 3, "node-1", "write", now=20.0 + REMEMBER_S)


def test_a_superseded_wait_is_handed_back() -> None:
    gate: FinalGate[str] = FinalGate()
    gate.wait(IKE, 2, "node-3", "write", now=10.0)
    assert gate.drop(IKE) == "write"
    assert gate.drop(IKE) is None
    assert gate.due(99.0) == []
