"""ESP interop with an independent implementation: scapy's SecurityAssociation.

Every suite keyd offers, ESN on and off, with and without UDP encapsulation (RFC 3948), both
directions: scapy encrypts → cluster.esp decrypts, cluster.esp encrypts → scapy decrypts.
"""

from __future__ import annotations

import pytest
from scapy_peer import SUITES, make_peer

from cluster.esp import ChildSa, SaCounters, SaTable
from cluster.esp.table import Decrypted

MATRIX = [(e, i, esn, udp) for e, i in SUITES for esn in (False, True) for udp in (False, True)]
IDS = [f"{e}-{i or 'aead'}-{'esn' if esn else 'seq32'}-{'udp' if udp else 'esp'}"
       for e, i, esn, udp in MATRIX]


@pytest.mark.parametrize(("encr", "integ", "esn", "udp"), MATRIX, ids=IDS)
def test_scapy_to_core(encr: str, integ: str | None, esn: bool, udp: bool) -> None:
    peer = make_peer(encr, integ, esn, udp)
    sa = peer.node_sa()
    table = SaTable[ChildSa]()
    table.install(sa)
    for n in range(1, 6):
        inner, esp = peer.client_packet(payload=b"x" * (n * 37))
        event = table.receive(esp, now=float(n)) if udp else table.receive_esp(esp, float(n))
        assert isinstance(event, Decrypted), event
        assert event.inner == inner
    assert sa.counters().in_highest == 5
    assert sa.counters().in_bitmap == 0b11111
    assert sa.packets_in == 5 and not sa.drops


@pytest.mark.parametrize(("encr", "integ", "esn", "udp"), MATRIX, ids=IDS)
def test_core_to_scapy(encr: str, integ: str | None, esn: bool, udp: bool) -> None:
    peer = make_peer(encr, integ, esn, udp)
    sa = peer.node_sa()
    for n in range(1, 6):
        inner, _ = peer.client_packet(payload=bytes(range(n * 41 % 256)))
        esp = sa.seal(inner, now=float(n))
        assert int.from_bytes(esp[4:8]) == n
        assert peer.client_receive(esp) == inner
    assert sa.counters().out_seq == 5


@pytest.mark.parametrize(("encr", "integ"), SUITES, ids=[f"{e}-{i}" for e, i in SUITES])
def test_esn_wrap_both_directions(encr: str, integ: str | None) -> None:
    """RFC 4304 / RFC 4303 Appendix A: across the 2**32 boundary the high bits are inferred."""
    peer = make_peer(encr, integ, esn=True, udp=True)
    sa = peer.node_sa(window=64)
    table = SaTable[ChildSa]()
    table.install(sa)
    start = (1 << 32) - 3
    sa.restore(SaCounters(0, start - 1, 1))  # as a hand-off near the wrap would leave it
    # client side: its sequence numbers cross the low-order wrap; we only see the low 32 bits
    for seq in [start, start + 1, start + 3, start + 2, start + 5, start + 4]:
        inner, esp = peer.client_packet(seq=seq)
        event = table.receive(esp, 0.0)
        assert isinstance(event, Decrypted), (seq, event)
        assert event.inner == inner
    assert sa.window.highest == start + 5
    # a late packet from before the wrap still lands in the window (Case B of Appendix A)
    _, esp = peer.client_packet(seq=start - 10)
    assert isinstance(table.receive(esp, 0.0), Decrypted)
    # our side: continue after a hand-off near the wrap; scapy needs the high bits explicitly
    sa.restore(SaCounters(start, sa.window.highest, sa.window.bitmap))
    for seq in range(start + 1, start + 6):
        inner, _ = peer.client_packet()
        esp = sa.seal(inner, 0.0)
        assert int.from_bytes(esp[4:8]) == seq & 0xFFFFFFFF
        assert peer.client_receive(esp, seq_high=seq >> 32) == inner


def test_esn_high_bits_are_authenticated() -> None:
    """A packet sealed for seq 2**32 + 5 must not verify as seq 5 (the high bits are in the ICV)."""
    peer = make_peer("aes128gcm16", None, esn=True, udp=True)
    sa = peer.node_sa()
    _, esp = peer.client_packet(seq=(1 << 32) + 5)
    table = SaTable[ChildSa]()
    table.install(sa)
    event = table.receive(esp, 0.0)
    assert not isinstance(event, Decrypted)
    assert sa.counters().in_highest == 0
