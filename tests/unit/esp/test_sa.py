"""ChildSa beyond interop: inner IPv6, bad keys, two cores talking, counters hand-off."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP
from scapy.layers.inet6 import UDP, IPv6
from scapy.packet import Raw, raw
from scapy_peer import SPI_IN, SPI_OUT, SUITES, make_peer

from cluster.esp import (
    ChildSa,
    EspUsageError,
    IvSource,
    SaCounters,
    SaKeys,
    SaTable,
    TrafficSelector,
    suite,
)
from cluster.esp.table import Decrypted

IDS = [f"{e}-{i or 'aead'}" for e, i in SUITES]


def mirror(sa_keys: SaKeys) -> SaKeys:
    return SaKeys(sa_keys.enc_key_out, sa_keys.enc_key_in, sa_keys.integ_key_out,
                  sa_keys.integ_key_in)


def transfer(sender: ChildSa, receiver: SaTable, inner: bytes) -> bytes | None:
    event = receiver.receive(sender.seal(inner, 0.0), 0.0)
    return event.inner if isinstance(event, Decrypted) else None


@pytest.mark.parametrize(("encr", "integ"), SUITES, ids=IDS)
def test_two_cores_ipv6_inner(encr: str, integ: str | None) -> None:
    peer = make_peer(encr, integ, esn=True, udp=True)
    node = ChildSa(spi_in=SPI_IN, spi_out=SPI_OUT, encr=encr, integ=integ, esn=True,
                   keys=peer.keys, iv_source=IvSource(b"\x00\x00\x00\x01"),
                   ts_remote=(TrafficSelector.from_network("2001:db8:99::7/128"),))
    client = ChildSa(spi_in=SPI_OUT, spi_out=SPI_IN, encr=encr, integ=integ, esn=True,
                     keys=mirror(peer.keys), iv_source=IvSource(b"\x00\x00\x00\x02"),
                     ts_remote=(TrafficSelector.from_network("::/0"),))
    at_node, at_client = SaTable[ChildSa](), SaTable[ChildSa]()
    at_node.install(node)
    at_client.install(client)
    up = raw(IPv6(src="2001:db8:99::7", dst="2001:db8:20::10") / UDP(sport=5, dport=53)
             / Raw(b"q" * 33))
    assert transfer(client, at_node, up) == up
    down = raw(IPv6(src="2001:db8:20::10", dst="2001:db8:99::7") / ICMP() / Raw(b"a"))
    assert transfer(node, at_client, down) == down
    spoofed = raw(IPv6(src="2001:db8:99::8", dst="2001:db8:20::10") / UDP(sport=5, dport=53))
    assert transfer(client, at_node, spoofed) is None


def test_scapy_ipv6_inner() -> None:
    peer = make_peer("aes256gcm16", None, esn=False, udp=True)
    node = peer.node_sa()
    inner = raw(IPv6(src="2001:db8:20::10", dst="2001:db8:99::7") / UDP(sport=1, dport=2))
    assert peer.client_receive(node.seal(inner, 0.0)) == inner


def test_port_narrowed_selector() -> None:
    peer = make_peer("aes128gcm16", None, esn=False, udp=True)
    node = ChildSa(spi_in=SPI_IN, spi_out=SPI_OUT, encr="aes128gcm16", integ=None, esn=False,
                   keys=peer.keys,
                   ts_remote=(TrafficSelector.from_network("10.99.0.7/32", 17, 5000, 5001),))
    from scapy.layers.inet import IP
    from scapy.layers.inet import UDP as UDP4
    for sport, ok in ((5000, True), (5001, True), (4999, False)):
        inner = IP(src="10.99.0.7", dst="10.20.0.10") / UDP4(sport=sport, dport=53)
        peer.to_node.seq_num = sport
        esp = raw(peer.to_node.encrypt(inner))[28:]
        assert (node.receive(esp, 0.0) is not None) is ok


def test_counters_hand_off_exactly() -> None:
    """What one node exports another continues: no replay accepted, no sequence reused."""
    peer = make_peer("chacha20poly1305", None, esn=True, udp=False)
    a, b = peer.node_sa(prefix=b"\x00\x00\x00\x01"), peer.node_sa(prefix=b"\x00\x00\x00\x02")
    inner, _ = peer.client_packet()
    sent = [a.seal(inner, 0.0) for _ in range(3)]
    received = [peer.client_packet()[1] for _ in range(4)]  # seq 2..5
    for esp in received:
        assert a.receive(esp, 0.0) is not None
    b.restore(a.counters())
    assert b.counters() == SaCounters(3, 5, 0b1111)
    assert all(b.receive(esp, 0.0) is None for esp in received)  # replays
    assert int.from_bytes(b.seal(inner, 0.0)[4:8]) == 4
    assert peer.client_receive(sent[0]) == inner


@pytest.mark.parametrize(("encr", "integ", "enc_len", "integ_len"), [
    ("aes128gcm16", None, 16, 0),  # salt missing
    ("aes128", "sha256", 16, 20),
    ("aes256", "sha512", 16, 64),
])
def test_bad_key_lengths(encr: str, integ: str | None, enc_len: int, integ_len: int) -> None:
    keys = SaKeys(b"k" * enc_len, b"k" * enc_len, b"i" * integ_len, b"i" * integ_len)
    with pytest.raises(EspUsageError):
        ChildSa(spi_in=1, spi_out=2, encr=encr, integ=integ, esn=False, keys=keys)


@pytest.mark.parametrize(("encr", "integ"), [("aes128gcm16", "sha256"), ("aes128", None),
                                             ("des", None), ("aes128", "md5")])
def test_bad_suites(encr: str, integ: str | None) -> None:
    with pytest.raises(EspUsageError):
        suite(encr, integ)


def test_seal_refuses_non_ip() -> None:
    peer = make_peer("aes128gcm16", None, esn=False, udp=False)
    sa = peer.node_sa()
    with pytest.raises(EspUsageError):
        sa.seal(b"\x10garbage", 0.0)
    assert sa.counters().out_seq == 0
