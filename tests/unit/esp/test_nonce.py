"""Nonce safety (issue 4 item 2): two senders of one SA never produce the same (key, IV).

The explicit IV is `node prefix | node counter`, never the sequence number: so even two nodes
that both believe they own an SA (split brain) and send the very same sequence numbers under
the same key emit different nonces.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy_peer import make_peer

from cluster.esp import EspUsageError, IvSource, SaCounters, prefix_from_revision
from cluster.esp.nonce import COUNTER_LIMIT


def explicit_iv(esp: bytes) -> bytes:
    return esp[8:16]


@pytest.mark.parametrize("encr", ["aes128gcm16", "aes256gcm16", "chacha20poly1305"])
def test_split_brain_same_sequence_numbers_different_nonces(encr: str) -> None:
    peer = make_peer(encr, None, esn=False, udp=True)
    node_a = peer.node_sa(prefix=prefix_from_revision(41))
    node_b = peer.node_sa(prefix=prefix_from_revision(57))
    node_b.restore(node_a.counters())
    inner, _ = peer.client_packet()
    ivs: set[bytes] = set()
    for _ in range(50):
        pa, pb = node_a.seal(inner, 0.0), node_b.seal(inner, 0.0)
        assert pa[4:8] == pb[4:8]  # the same sequence number...
        assert explicit_iv(pa) != explicit_iv(pb)  # ...under different nonces
        ivs.update((explicit_iv(pa), explicit_iv(pb)))
        assert peer.client_receive(pa) == inner  # and each is valid ESP
    assert len(ivs) == 100
    assert explicit_iv(pa) != pa[4:8].rjust(8, b"\x00")  # not the sequence number


def test_iv_counter_survives_reinstall_and_restore() -> None:
    """One IvSource per incarnation: a re-installed SA or a hand-off back does not reset it."""
    peer = make_peer("aes128gcm16", None, esn=True, udp=False)
    source = IvSource(prefix_from_revision(7))
    seen: set[bytes] = set()
    inner, _ = peer.client_packet()
    for _round in range(3):
        sa = peer.node_sa()
        sa.iv_source = source
        sa.restore(SaCounters(0, 0, 0))  # the same sequence numbers again, every round
        for _ in range(20):
            iv = explicit_iv(sa.seal(inner, 0.0))
            assert iv not in seen
            seen.add(iv)


@settings(max_examples=100, deadline=None)
@given(ops=st.lists(st.tuples(st.integers(0, 2), st.integers(1, 5)), max_size=60))
def test_no_iv_repeats_across_incarnations(ops: list[tuple[int, int]]) -> None:
    """Any interleaving of three incarnations (distinct revisions) sending on one SA."""
    sources = [IvSource(prefix_from_revision(r)) for r in (3, 900, (1 << 32) + 4)]
    seen: set[bytes] = set()
    for who, n in ops:
        for _ in range(n):
            iv = sources[who].next_iv()
            assert iv not in seen
            seen.add(iv)


def test_counter_exhaustion_refuses_until_renewed() -> None:
    source = IvSource(b"\x00\x00\x00\x09")
    source._counter = COUNTER_LIMIT - 1
    last = source.next_iv()
    assert last == b"\x00\x00\x00\x09\xff\xff\xff\xff"
    with pytest.raises(EspUsageError):
        source.next_iv()
    with pytest.raises(EspUsageError):
        source.renew(b"\x00\x00\x00\x09")  # a prefix is used once
    source.renew(b"\x00\x00\x00\x0a")
    assert source.next_iv() == b"\x00\x00\x00\x0a\x00\x00\x00\x00"


def test_aead_sa_without_iv_source_cannot_send() -> None:
    peer = make_peer("aes128gcm16", None, esn=False, udp=False)
    sa = peer.node_sa()
    sa.iv_source = None
    inner, esp = peer.client_packet()
    with pytest.raises(EspUsageError):
        sa.seal(inner, 0.0)
    assert sa.counters().out_seq == 0
    assert sa.receive(esp, 0.0) == inner  # receiving needs no IVs


def test_sequence_space_exhaustion_without_esn() -> None:
    peer = make_peer("aes128", "sha256", esn=False, udp=False)
    sa = peer.node_sa()
    sa.restore(SaCounters((1 << 32) - 1, 0, 0))
    inner, _ = peer.client_packet()
    with pytest.raises(EspUsageError):
        sa.seal(inner, 0.0)
    assert sa.counters().out_seq == (1 << 32) - 1


def test_prefix_needs_a_revision() -> None:
    with pytest.raises(EspUsageError):
        prefix_from_revision(0)
