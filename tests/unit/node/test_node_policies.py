"""PolicyBook, driven directly: which filter an SA runs before and after the node has read
policy/, and that nothing missing or malformed ever fails open."""

from __future__ import annotations

import dataclasses
import ipaddress
import struct

from cluster.node.policies import PolicyBook
from cluster.policy import DropVerdict
from cluster.store import ChildSaRecord, Policy

RECORD = ChildSaRecord(
    spi_in=0x100, spi_out=0x200, ike_sa_id="00" * 16, encr="aes128gcm16", integ=None,
    esn=False, enc_key_in=b"k" * 20, integ_key_in=b"", enc_key_out=b"k" * 20, integ_key_out=b"",
    ts_local=["0.0.0.0/0"], ts_remote=["10.99.0.2/32"], peer_addr="192.0.2.10", peer_port=4500,
    udp_encap=True, virtual_ip="10.99.0.2", identity="c@example.org", created_at=1.0,
    soft_lifetime_s=3000, hard_lifetime_s=3600)


def icmp_to(dst: str) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 1, 0, 64, 1, 0,
                       ipaddress.ip_address("10.99.0.2").packed,
                       ipaddress.ip_address(dst).packed) + b"\x08\0\0\0\0\0\0\0"


def test_no_policy_no_filter() -> None:
    book = PolicyBook()
    assert book.filter_for(RECORD) is None
    book.resynced(set())
    assert book.filter_for(RECORD) is None


def test_snapshot_until_synced_then_live() -> None:
    book = PolicyBook()
    r = dataclasses.replace(RECORD, policy="p", policy_mode="split",
                            policy_allowed=["10.20.0.0/16"])
    f = book.filter_for(r)
    assert f is not None and f.verdict_in(icmp_to("10.20.0.1")) is None
    assert f.verdict_in(icmp_to("10.21.0.1")) is DropVerdict.NOT_ALLOWED
    book.put("p", Policy("p", [], "split", ["10.21.0.0/16"]))
    book.resynced({"p"})
    live = book.filter_for(r)
    assert live is not None and live.verdict_in(icmp_to("10.21.0.1")) is None
    assert live.verdict_in(icmp_to("10.20.0.1")) is DropVerdict.NOT_ALLOWED
    assert book.filter_for(r) is live  # one compiled filter per policy, shared


def test_missing_malformed_removed_fail_closed() -> None:
    book = PolicyBook()
    unknown = dataclasses.replace(RECORD, policy="later")  # keyd had no policy/later
    f = book.filter_for(unknown)
    assert f is not None and f.verdict_in(icmp_to("198.51.100.1")) is DropVerdict.UNRESOLVED
    book.bind(unknown.spi_in, None, unknown)
    book.resynced(set())
    assert book.failing_closed() == ["later"]
    book.put("later", Policy("later", [], "full"))
    assert book.filter_for(unknown).verdict_in(icmp_to("198.51.100.1")) is None  # type: ignore[union-attr]
    assert book.failing_closed() == []
    book.malformed("later", "mode: 7 not one of ...")
    assert book.filter_for(unknown).verdict_in(  # type: ignore[union-attr]
        icmp_to("198.51.100.1")) is DropVerdict.UNRESOLVED
    book.put("later", Policy("later", [], "full"))
    book.delete("later")
    assert book.filter_for(unknown).verdict_out(  # type: ignore[union-attr]
        icmp_to("198.51.100.1")) is DropVerdict.UNRESOLVED
    assert book.failing_closed() == ["later"]
    # a record under a key of another name is not that policy
    book.put("later", Policy("other", [], "full"))
    assert book.filter_for(unknown).verdict_in(  # type: ignore[union-attr]
        icmp_to("198.51.100.1")) is DropVerdict.UNRESOLVED


def test_bindings_follow_the_records() -> None:
    book = PolicyBook()
    a = dataclasses.replace(RECORD, policy="a")
    book.bind(1, None, a)
    book.bind(2, None, a)
    assert sorted(book.bound("a")) == [1, 2]
    book.bind(1, a, dataclasses.replace(RECORD, policy="b"))
    assert book.bound("a") == [2] and book.bound("b") == [1]
    book.unbind(2, a)
    assert book.bound("a") == [] and book.names_bound() == ["b"]
