"""The node's sequence-counter bookkeeping (cluster/node/counters.py): checkpoints, send
limits, take-over. Pure: no etcd, no clock (times are passed in)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.esp import SaCounters
from cluster.node.config import jump_for
from cluster.node.counters import Checkpointer, is_final_for, merge_window, take_over
from cluster.store import Assignment, SeqRecord

SPI = 0xC0DE0001
J = jump_for(16)


def assignment(epoch: int, node: str = "n2", phase: str = "active",
               previous: str | None = "n1") -> Assignment:
    return Assignment("ab" * 16, node, epoch, phase, previous, 0.0)  # type: ignore[arg-type]


def seq(out: int, kind: str = "checkpoint", epoch: int = 1, owner: str = "n1") -> SeqRecord:
    return SeqRecord(SPI, owner, epoch, out, 7, 0b101, kind, 0.0)  # type: ignore[arg-type]


def test_take_over_final_is_exact() -> None:
    t = take_over(seq(100, "final", epoch=2), assignment(2, phase="handoff"), J)
    assert t.exact and t.counters == SaCounters(100, 7, 0b101)


@pytest.mark.parametrize("record", [
    seq(100, "final", epoch=1),  # a final of an older hand-off: only a checkpoint now
    seq(100, "final", epoch=2, owner="n3"),  # not from the node we move away from
    seq(100, "checkpoint", epoch=2),
])
def test_take_over_otherwise_jumps(record: SeqRecord) -> None:
    t = take_over(record, assignment(2), J)
    assert not t.exact and t.counters == SaCounters(100 + J, 7, 0b101)
    assert not is_final_for(record, assignment(2))


def test_take_over_without_record_starts_at_the_jump() -> None:
    assert take_over(None, assignment(1, previous=None), J).counters == SaCounters(J, 0, 0)


def test_checkpoint_every_d_packets_or_t_ms() -> None:
    c = Checkpointer("n1", every_packets=16, every_ms=100, jump=J)
    start = SaCounters(J, 0, 0)
    c.own(SPI, "k", 1, start, start, now=0.0)  # exact start: already in etcd
    assert c.due({SPI: start}, 0.05, 0.0) == []  # nothing moved
    assert c.due({SPI: SaCounters(J + 3, 0, 0)}, 0.05, 0.0) == []  # < D and < T
    due = c.due({SPI: SaCounters(J + 16, 0, 0)}, 0.06, 0.0)  # D packets
    assert [d.record.out_seq for d in due] == [J + 16]
    assert c.due({SPI: SaCounters(J + 40, 0, 0)}, 0.07, 0.0) == []  # one write at a time
    c.acked([due[0].record], now=0.07)
    assert c.send_limit(SPI) == J + 16 + J
    assert c.due({SPI: SaCounters(J + 17, 0, 0)}, 0.10, 0.0) == []
    assert len(c.due({SPI: SaCounters(J + 17, 0, 0)}, 0.18, 0.0)) == 1  # T passed


def test_jumped_start_is_written_before_sending() -> None:
    c = Checkpointer("n2", 16, 100, J)
    c.own(SPI, "k", 2, SaCounters(100 + J, 7, 5), SaCounters(100, 7, 5), now=0.0)
    assert c.send_limit(SPI) == 100 + J  # = the start: nothing can be sent yet
    due = c.due({SPI: SaCounters(100 + J, 7, 5)}, 0.0, 0.0)  # forced although nothing moved
    assert len(due) == 1 and due[0].record.out_seq == 100 + J
    c.failed([due[0].record])  # etcd down: still forced, retried
    due = c.due({SPI: SaCounters(100 + J, 7, 5)}, 0.01, 0.0)
    assert len(due) == 1
    c.acked([due[0].record], 0.02)
    assert c.send_limit(SPI) == 100 + 2 * J
    assert c.queued() == 0


def test_merge_window_is_a_union() -> None:
    a = SaCounters(10, 100, 0b1011)  # 100, 99, 97
    b = SaCounters(30, 98, 0b11)  # 98, 97
    m = merge_window(a, b, 64)
    assert m == SaCounters(30, 100, 0b1111)
    assert merge_window(a, SaCounters(0, 500, 1), 64) == SaCounters(10, 500, 1)


@settings(max_examples=200, deadline=None)
@given(script=st.lists(st.tuples(st.sampled_from(["send", "ckpt_ok", "ckpt_fail", "failover"]),
                                 st.integers(1, 3 * J)), min_size=1, max_size=40))
def test_no_sequence_number_is_ever_sent_twice(script: list[tuple[str, int]]) -> None:
    """Owners come and go (failovers, split brain: old owners keep sending up to their
    limits, checkpoints fail at random): the numbers two incarnations send never overlap.
    Checkpoint writes are guarded by the assignment, so only the newest owner's succeed."""
    persisted: SaCounters | None = None
    owners: list[tuple[Checkpointer, list[int]]] = []  # (bookkeeping, [out_seq])
    sent: dict[int, set[int]] = {}

    def failover() -> None:
        nonlocal persisted
        c = Checkpointer(f"n{len(owners)}", 16, 100, J)
        record = None if persisted is None else SeqRecord(
            SPI, "x", 1, persisted.out_seq, 0, 0, "checkpoint", 0.0)
        start = take_over(record, assignment(len(owners) + 1), J).counters
        c.own(SPI, "k", len(owners) + 1, start, persisted, 0.0)
        owners.append((c, [start.out_seq]))
        sent[len(owners) - 1] = set()
    failover()
    for op, n in script:
        if op == "failover":
            failover()
            continue
        for i, (c, out) in enumerate(owners):  # every incarnation still alive acts
            if op == "send":
                for _ in range(n):
                    if out[0] + 1 >= c.send_limit(SPI):
                        break
                    out[0] += 1
                    sent[i].add(out[0])
            else:
                due = c.due({SPI: SaCounters(out[0], 0, 0)}, 1.0, 0.0)
                if not due:
                    continue
                if op == "ckpt_ok" and i == len(owners) - 1:
                    c.acked([d.record for d in due], 1.0)
                    persisted = SaCounters(due[0].record.out_seq, 0, 0)
                else:
                    c.failed([d.record for d in due])
    for i in sent:
        for k in sent:
            if i < k:
                assert not sent[i] & sent[k], (i, k)


def test_a_window_change_alone_is_checkpointed_after_t() -> None:
    """A packet that arrives out of order (below in_highest) changes only the bitmap: it is
    written once T passed, and the mark the data path compares against includes it."""
    cp = Checkpointer("n1", 16, 1000, 1024 * 16)
    start = SaCounters(100, 50, 0b1101)
    cp.own(7, "ike", 1, start, start, 0.0)
    assert cp.marks[7] == (100, 50, 0b1101)
    filled = SaCounters(100, 50, 0b1111)
    assert cp.due({7: filled}, 0.5, 0.0) == []  # before T: not yet
    (d,) = cp.due({7: filled}, 1.0, 0.0)  # after T: written
    assert (d.record.in_highest, d.record.in_bitmap) == (50, 0b1111)
    cp.acked([d.record], 1.0)
    assert cp.marks[7] == (100, 50, 0b1111)
    assert cp.due({7: filled}, 5.0, 0.0) == []  # nothing changed since: nothing written
