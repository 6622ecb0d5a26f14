"""Store.get_many: many records of one kind in a few transactions (a node taking over
thousands of clients reads their seq records at once)."""

from __future__ import annotations

import time

import pytest

from cluster.store import MalformedRecord, SeqRecord, Store


def _seq(spi: int, out_seq: int) -> SeqRecord:
    return SeqRecord(spi, "node-1", 3, out_seq, out_seq - 5, 0xFF, "checkpoint", time.time())


def test_get_many_reads_present_and_absent_across_transactions(store: Store) -> None:
    present = [0xD0000000 + i for i in range(300)]   # more than one transaction's worth
    absent = [0xD1000000 + i for i in range(20)]
    store.put_many(_seq(spi, 1000 + i) for i, spi in enumerate(present))
    got = store.get_many(SeqRecord, present + absent + present[:3])   # duplicates once
    assert set(got) == set(present) | set(absent)
    for i, spi in enumerate(present):
        v = got[spi]
        assert v is not None and v.record.spi == spi and v.record.out_seq == 1000 + i
        assert v.mod_revision > 0
    assert all(got[spi] is None for spi in absent)
    assert store.get_many(SeqRecord, []) == {}


def test_get_many_junk_value_raises_or_reads_as_absent(store: Store) -> None:
    store.put(_seq(0xD2000001, 10))
    store.raw_put(store.keyspace.seq(0xD2000002), b"\xffnot a record")
    with pytest.raises(MalformedRecord):
        store.get_many(SeqRecord, [0xD2000001, 0xD2000002])
    got = store.get_many(SeqRecord, [0xD2000001, 0xD2000002], strict=False)
    v = got[0xD2000001]
    assert v is not None and v.record.out_seq == 10
    assert got[0xD2000002] is None
