"""Bad packets are dropped with the right counter and change no SA state.

Packets come from scapy (the independent peer); where scapy has no knob for the fault (bad
padding) its own ESP building blocks are used with the padding altered before encryption.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.ipsec import _ESPPlain
from scapy.packet import Raw, raw
from scapy_peer import SERVER, SPI_IN, SUITES, make_peer

from cluster.esp import ChildSa, DropReason, SaTable
from cluster.esp.table import Decrypted, Dropped

IDS = [f"{e}-{i or 'aead'}" for e, i in SUITES]


def snapshot(sa: ChildSa) -> tuple[object, ...]:
    return (sa.counters(), sa.packets_in, sa.bytes_in, sa.packets_out, sa.last_in_s)


def assert_dropped(table: SaTable, sa: ChildSa, esp: bytes, reason: DropReason) -> None:
    before = snapshot(sa)
    drops_before = table.drops[reason]
    event = table.receive(esp, now=99.0)
    assert isinstance(event, Dropped), event
    assert event.reason is reason
    assert table.drops[reason] == drops_before + 1
    assert snapshot(sa) == before


@pytest.fixture(params=SUITES, ids=IDS)
def setup(request: pytest.FixtureRequest):
    encr, integ = request.param
    peer = make_peer(encr, integ, esn=True, udp=True)
    sa = peer.node_sa(window=64)
    table = SaTable[ChildSa]()
    table.install(sa)
    return peer, sa, table


def test_replayed(setup) -> None:
    peer, sa, table = setup
    _, esp = peer.client_packet()
    assert isinstance(table.receive(esp, 1.0), Decrypted)
    assert_dropped(table, sa, esp, DropReason.REPLAY)
    assert sa.drops[DropReason.REPLAY] == 1


@pytest.mark.parametrize(("encr", "integ"), SUITES, ids=IDS)
def test_too_old(encr: str, integ: str | None) -> None:
    peer = make_peer(encr, integ, esn=False, udp=True)
    sa = peer.node_sa(window=64)
    table = SaTable[ChildSa]()
    table.install(sa)
    _, old = peer.client_packet(seq=5)
    _, new = peer.client_packet(seq=5 + 64)
    assert isinstance(table.receive(new, 1.0), Decrypted)
    assert_dropped(table, sa, old, DropReason.TOO_OLD)
    # one inside the window is still fine
    _, inside = peer.client_packet(seq=6)
    assert isinstance(table.receive(inside, 1.0), Decrypted)


def test_too_old_with_esn(setup) -> None:
    """RFC 4303 Appendix A2.2: with ESN, low bits left of the window mean the next subspace;
    the packet then fails its ICV (it was sealed for the old one) and changes nothing."""
    peer, sa, table = setup
    _, old = peer.client_packet(seq=5)
    _, new = peer.client_packet(seq=5 + 64)
    assert isinstance(table.receive(new, 1.0), Decrypted)
    assert_dropped(table, sa, old, DropReason.INTEGRITY)
    # one inside the window is still fine
    _, inside = peer.client_packet(seq=6)
    assert isinstance(table.receive(inside, 1.0), Decrypted)


def test_truncated(setup) -> None:
    peer, sa, table = setup
    _, esp = peer.client_packet()
    for cut in (esp[:7], esp[:8], esp[:8 + sa.suite.iv_len + 4], esp[:-1]):
        reason = DropReason.MALFORMED
        before = table.drops[reason] + table.drops[DropReason.UNKNOWN_SPI]
        event = table.receive(cut, 1.0)
        assert isinstance(event, Dropped) and event.reason is reason, (len(cut), event)
        assert table.drops[reason] + table.drops[DropReason.UNKNOWN_SPI] == before + 1
    assert sa.counters().in_highest == 0
    assert isinstance(table.receive(esp, 1.0), Decrypted)  # the intact packet still goes


def test_bad_icv(setup) -> None:
    peer, sa, table = setup
    _, esp = peer.client_packet()
    for pos in (len(esp) - 1, 8 + sa.suite.iv_len + 2, 4):  # tag, ciphertext, seq
        bad = bytearray(esp)
        bad[pos] ^= 0x01
        assert_dropped(table, sa, bytes(bad), DropReason.INTEGRITY)
    assert isinstance(table.receive(esp, 1.0), Decrypted)


def test_bad_padding(setup) -> None:
    peer, sa, table = setup
    scapy_sa = peer.to_node
    inner = IP(src="10.99.0.7", dst=SERVER) / UDP(sport=1, dport=2) / Raw(b"x")
    esp = _ESPPlain(spi=SPI_IN, seq=1, iv=scapy_sa.crypt_algo.generate_iv(), data=raw(inner),
                    nh=4)
    esp = scapy_sa.crypt_algo.pad(esp)
    assert esp.padlen >= 1
    esp.padding = b"\x00" * esp.padlen  # RFC 4303 §2.4 says 1, 2, 3, ...
    sealed = scapy_sa.crypt_algo.encrypt(scapy_sa, esp, scapy_sa.crypt_key, None,
                                         esn_en=True, esn=0)
    scapy_sa.auth_algo.sign(sealed, scapy_sa.auth_key, esn_en=True, esn=0)
    assert_dropped(table, sa, raw(sealed), DropReason.BAD_PADDING)


def test_wrong_spi(setup) -> None:
    peer, sa, table = setup
    _, esp = peer.client_packet()
    other = (SPI_IN ^ 0xFF).to_bytes(4) + esp[4:]
    assert_dropped(table, sa, other, DropReason.UNKNOWN_SPI)
    with pytest.raises(Exception, match="unknown_spi"):
        sa.open(other, 1.0)


def test_spoofed_inner_source(setup) -> None:
    peer, sa, table = setup
    _, esp = peer.client_packet(src="10.99.0.8")  # not the client's virtual IP
    assert_dropped(table, sa, esp, DropReason.SELECTOR)


def test_udp_demux() -> None:
    table = SaTable[ChildSa]()
    assert type(table.receive(b"\xff", 0.0)).__name__ == "Keepalive"
    ike = b"\x00" * 4 + b"I" * 28
    event = table.receive(ike, 0.0)
    assert type(event).__name__ == "IkeMessage" and event.message == b"I" * 28  # type: ignore
    for junk in (b"", b"\x01", b"\x00\x00\x00\x00ab", b"\x01\x02\x03"):
        event = table.receive(junk, 0.0)
        assert isinstance(event, Dropped) and event.reason is DropReason.MALFORMED


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=300), suite_index=st.integers(0, len(SUITES) - 1),
       esn=st.booleans(), flips=st.lists(st.integers(0, 2000), max_size=3))
def test_fuzzed_packets_only_ever_drop(body: bytes, suite_index: int, esn: bool,
                                       flips: list[int]) -> None:
    """Junk after a valid SPI, and valid packets with flipped bits: always a counted drop with
    a reason, never another exception, never a state change."""
    encr, integ = SUITES[suite_index]
    peer = make_peer(encr, integ, esn=esn, udp=True)
    sa = peer.node_sa(window=64)
    table = SaTable[ChildSa]()
    table.install(sa)
    _, valid = peer.client_packet()
    candidates = [SPI_IN.to_bytes(4) + body]
    if flips:
        bad = bytearray(valid)
        for f in flips:
            bad[f % len(bad)] ^= 1 << (f % 8)
        if bytes(bad) != valid and bad[:4] == valid[:4]:
            candidates.append(bytes(bad))
    for packet in candidates:
        before = snapshot(sa)
        event = table.receive(packet, 1.0)
        assert isinstance(event, Dropped)
        assert snapshot(sa) == before
    assert isinstance(table.receive(valid, 1.0), Decrypted)
