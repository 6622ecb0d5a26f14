"""The anti-replay window (RFC 4303 §3.4.3) and ESN inference (RFC 4303 Appendix A2.2)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.esp import EspProtocolError, EspUsageError, ReplayWindow, infer_seq
from cluster.esp.errors import DropReason


def outcome(w: ReplayWindow, seq: int) -> DropReason | None:
    try:
        w.check(seq)
    except EspProtocolError as e:
        return e.reason
    w.accept(seq)
    return None


@settings(max_examples=300, deadline=None)
@given(size=st.sampled_from([64, 65, 100, 1024, 4096]),
       seqs=st.lists(st.integers(min_value=0, max_value=6000), max_size=200))
def test_window_matches_reference_model(size: int, seqs: list[int]) -> None:
    """Against the plain definition: accept a number once, unless it is `size` or more below
    the highest accepted one; 0 is never valid."""
    w = ReplayWindow(size)
    seen: set[int] = set()
    highest = 0
    for seq in seqs:
        if seq == 0 or (seq <= highest and highest - seq >= size):
            expected: DropReason | None = DropReason.TOO_OLD
        elif seq in seen:
            expected = DropReason.REPLAY
        else:
            expected = None
        assert outcome(w, seq) is expected, (seq, highest)
        if expected is None:
            seen.add(seq)
            highest = max(highest, seq)
    assert w.highest == highest
    for seq in range(max(1, highest - size + 1), highest + 1):
        assert bool((w.bitmap >> (highest - seq)) & 1) == (seq in seen)


def test_check_changes_nothing() -> None:
    w = ReplayWindow(64)
    for s in (1, 2, 70):
        w.accept(s)
    state = (w.highest, w.bitmap)
    for s in (1, 70, 3, 200, 0):
        with contextlib.suppress(EspProtocolError):
            w.check(s)
        assert (w.highest, w.bitmap) == state


@pytest.mark.parametrize("size", [63, 4097, 0])
def test_window_size_limits(size: int) -> None:
    with pytest.raises(EspUsageError):
        ReplayWindow(size)


def test_restore_truncates_to_window() -> None:
    w = ReplayWindow(64)
    w.restore(1000, (1 << 200) - 1)
    assert w.bitmap == (1 << 64) - 1
    assert outcome(w, 1000 - 63) is DropReason.REPLAY
    assert outcome(w, 1000 - 64) is DropReason.TOO_OLD
    assert outcome(w, 1001) is None


# RFC 4303 Appendix A2.2, both cases, W = 64
@pytest.mark.parametrize(("highest", "low", "expected"), [
    ((5 << 32) | 1000, 1000 - 63, (5 << 32) | 937),  # Case A, inside window
    ((5 << 32) | 1000, 2000, (5 << 32) | 2000),  # Case A, ahead
    ((5 << 32) | 1000, 100, (6 << 32) | 100),  # Case A, left of window → next subspace
    ((5 << 32) | 10, 0xFFFFFFF0, (4 << 32) | 0xFFFFFFF0),  # Case B, window spans the wrap
    ((5 << 32) | 10, 50, (5 << 32) | 50),  # Case B, ahead
    (0xFFFFFFF0, 3, (1 << 32) | 3),  # Case A crossing the wrap
])
def test_infer_seq(highest: int, low: int, expected: int) -> None:
    assert infer_seq(low, highest, 64, esn=True) == expected
    assert infer_seq(low, highest, 64, esn=False) == low


def test_infer_seq_before_first_subspace() -> None:
    with pytest.raises(EspProtocolError):
        infer_seq(0xFFFFFFF0, 10, 64, esn=True)


@settings(max_examples=300, deadline=None)
@given(highest=st.integers(min_value=1 << 32, max_value=(1 << 64) - (1 << 33)),
       delta=st.integers(min_value=-63, max_value=(1 << 31)))
def test_infer_seq_recovers_any_number_near_the_window(highest: int, delta: int) -> None:
    seq = highest + delta
    assert infer_seq(seq & 0xFFFFFFFF, highest, 64, esn=True) == seq


@settings(max_examples=200, deadline=None)
@given(size=st.sampled_from([64, 65, 100, 1024, 4096]),
       highest=st.integers(min_value=0, max_value=1 << 40),
       bitmap=st.integers(min_value=0, max_value=(1 << 4096) - 1),
       probes=st.lists(st.integers(min_value=0, max_value=5000), max_size=30))
def test_restored_window_reads_back_and_judges_like_its_bitmap(
        size: int, highest: int, bitmap: int, probes: list[int]) -> None:
    """A window restored from (highest, bitmap) gives back the bitmap cut to its size, and
    judges every number below the top by that bitmap (the ring it keeps is not a shift
    register: this pins the conversion both ways)."""
    w = ReplayWindow(size, highest, bitmap)
    assert (w.highest, w.bitmap) == (highest, bitmap & ((1 << size) - 1))
    for p in probes:
        seq = highest - p
        if seq <= 0:
            continue
        reason = None
        if p >= size:
            reason = DropReason.TOO_OLD
        elif (bitmap >> p) & 1:
            reason = DropReason.REPLAY
        try:
            w.check(seq)
            got = None
        except EspProtocolError as e:
            got = e.reason
        assert got is reason, (seq, p)
    w.accept(highest + 3)  # a jump past two numbers clears their slots
    assert w.bitmap == ((bitmap << 3) | 1) & ((1 << size) - 1)
