"""Traffic counts in seq records: the codec keeps records written before the fields existed
readable, and the owner's checkpoints carry the SA's traffic over its whole life."""

from __future__ import annotations

import json

import pytest

from cluster.esp import SaCounters
from cluster.node.counters import Checkpointer, Traffic, seq_record
from cluster.store import MalformedRecord, SeqRecord
from cluster.store.records import decode_record, encode_record

OLD = {"v": 1, "spi": 0xC0DE0001, "owner": "node-1", "epoch": 3, "out_seq": 17000,
       "in_highest": 40, "in_bitmap": 7, "kind": "checkpoint", "written_at": 1.5}


def test_a_record_written_before_traffic_counts_still_reads() -> None:
    r = decode_record(SeqRecord, json.dumps(OLD).encode(), "k")
    assert (r.out_seq, r.packets_in, r.packets_out, r.bytes_in, r.bytes_out) == (
        17000, None, None, None, None)
    assert Traffic.of(r) == Traffic()


def test_traffic_round_trips_and_older_readers_see_known_fields() -> None:
    r = seq_record(0xC0DE0001, "node-1", 3, SaCounters(17000, 40, 7), "final", 1.5,
                   Traffic(40, 39, 3360, 3276))
    raw = encode_record(r, "k")
    assert decode_record(SeqRecord, raw, "k") == r
    body = json.loads(raw)
    assert {k: body[k] for k in OLD} == {**OLD, "kind": "final"}  # v1 fields unchanged
    assert body["v"] == 1


def test_negative_or_mistyped_counts_are_malformed() -> None:
    for bad in ({"bytes_in": -1}, {"packets_out": "12"}, {"bytes_out": 1.5}):
        with pytest.raises(MalformedRecord):
            decode_record(SeqRecord, json.dumps({**OLD, **bad}).encode(), "k")


def test_checkpoints_carry_traffic_and_a_take_over_counts_on() -> None:
    cp = Checkpointer("node-2", 16, 1000, 1024 * 16)
    cp.own(1, "ike", 2, SaCounters(100, 50, 1), SaCounters(100, 50, 1), 0.0)
    before = Traffic(50, 100, 5000, 10000)  # what the final record said
    local = Traffic(3, 4, 300, 400)  # this node's own count since (and a bit before)
    base = before - Traffic(1, 1, 100, 100)  # the node had counted some before taking over
    (due,) = cp.due({1: SaCounters(120, 60, 1)}, 2.0, 9.0, {1: base + local})
    r = due.record
    assert (r.packets_in, r.packets_out, r.bytes_in, r.bytes_out) == (52, 103, 5200, 10300)
    assert r.out_seq == 120 and r.kind == "checkpoint"


def test_without_traffic_the_record_says_nothing() -> None:
    cp = Checkpointer("node-2", 16, 1000, 1024 * 16)
    cp.own(1, "ike", 2, SaCounters(100, 50, 1), SaCounters(100, 50, 1), 0.0)
    (due,) = cp.due({1: SaCounters(120, 60, 1)}, 2.0, 9.0)
    assert due.record.packets_in is None and due.record.bytes_out is None
    assert seq_record(1, "n", 1, SaCounters(1, 1, 0), "checkpoint", 0.0,
                      Traffic(-5, 1, 2, 3)).packets_in == 0  # never a negative count
