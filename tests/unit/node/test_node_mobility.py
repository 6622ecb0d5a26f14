"""Where a node sends an SA's ESP after its record changes (cluster/node/mobility.py)."""

from __future__ import annotations

import json
import os
from dataclasses import replace

from test_node_policies import RECORD

from cluster.node.mobility import follows_esp, peer_after_update
from cluster.store import ChildSaRecord
from cluster.store.records import decode_record, encode_record
from cluster.store.seal import DataKey

NATTED = ("192.0.2.10", 31000)   # where NAT rebinding followed the client


def test_without_mobike_rebinding_survives_a_rewrite_that_keeps_the_address() -> None:
    again = replace(RECORD, soft_lifetime_s=2000)
    assert peer_after_update(NATTED, RECORD, again) == NATTED
    assert follows_esp(RECORD)


def test_a_record_with_a_new_address_moves_the_sa() -> None:
    moved = replace(RECORD, peer_addr="198.51.100.20")
    assert peer_after_update(NATTED, RECORD, moved) == ("198.51.100.20", 4500)
    assert peer_after_update(NATTED, None, moved) == ("198.51.100.20", 4500)


def test_a_mobike_sa_goes_where_its_record_says_only() -> None:
    mobike = replace(RECORD, mobike=True)
    assert not follows_esp(mobike)
    assert peer_after_update(NATTED, mobike, mobike) == ("192.0.2.10", 4500)


def test_records_written_before_mobike_read_as_without() -> None:
    key = "/ipsec-cluster/c/sa/00000100"
    data_key = DataKey(os.urandom(32), "test")
    doc = json.loads(encode_record(RECORD, key, data_key))
    assert "mobike" in json.dumps(doc)
    doc.get("data", doc).pop("mobike")
    old = decode_record(ChildSaRecord, json.dumps(doc).encode(), key, data_key)
    assert old.mobike is False
