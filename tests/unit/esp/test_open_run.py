"""`ChildSa.open_run`: the datagrams of one UDP GRO receive opened in one call give exactly
what opening them one by one gives — the same inner packets, the same drops in the same order,
the same sequence state — whatever mix of fresh, replayed, forged and spoofed packets the run
holds, across an ESN subspace boundary too. Packets come from scapy (the independent peer).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy_peer import SPI_IN, make_peer

from cluster.esp import ChildSa, DropReason, EspProtocolError, SaCounters

RUN_SUITES = [("aes128gcm16", None), ("chacha20poly1305", None), ("aes128", "sha256")]
IDS = [f"{e}-{i or 'aead'}" for e, i in RUN_SUITES]
PAYLOAD = b"p" * 40
BASE = (1 << 32) - 6  # the window's top before the run: the run crosses into subspace 1

# one datagram of the run: a fresh number (offset from BASE), a copy of an earlier datagram
# of the run (a replay), a forged one (ICV flipped), or one from a source outside the SA's
# selectors; all of one size, as UDP GRO makes them
ACTION = st.one_of(
    st.tuples(st.just("seq"), st.integers(-8, 12)),
    st.tuples(st.just("again"), st.integers(0, 40)),
    st.tuples(st.just("forged"), st.integers(1, 12)),
    st.tuples(st.just("spoofed"), st.integers(1, 12)),
)


def one_by_one(sa: ChildSa, datagrams: list[bytes]) -> tuple[list[bytes], list[DropReason]]:
    inner: list[bytes] = []
    drops: list[DropReason] = []
    for d in datagrams:
        try:
            inner.append(sa.open(d, 5.0))
        except EspProtocolError as e:
            drops.append(e.reason)
    return inner, drops


def state(sa: ChildSa) -> tuple[object, ...]:
    return (sa.counters(), sa.packets_in, sa.bytes_in, sa.last_in_s)


@pytest.mark.parametrize(("encr", "integ"), RUN_SUITES, ids=IDS)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=st.lists(ACTION, min_size=1, max_size=16), short_last=st.booleans())
def test_run_equals_one_by_one(encr: str, integ: str | None,
                               actions: list[tuple[str, int]], short_last: bool) -> None:
    peer = make_peer(encr, integ, esn=True, udp=True)
    datagrams: list[bytes] = []
    meant: list[tuple[str, int]] = []  # (kind, sequence number) of each datagram
    for kind, n in actions:
        if kind == "again" and datagrams:
            i = n % len(datagrams)
            datagrams.append(datagrams[i])
            meant.append(meant[i])
            continue
        if kind == "again":  # nothing to repeat yet: a fresh number
            kind, n = "seq", n % 13
        # every number of a run lies within the 64-packet window (BASE - 8 .. BASE + 32)
        seq = BASE + (n if kind == "seq" else 20 + n)
        meant.append((kind, seq))
        src = "10.99.0.8" if kind == "spoofed" else "10.99.0.7"
        _, esp = peer.client_packet(seq=seq, payload=PAYLOAD, src=src)
        if kind == "forged":
            esp = esp[:-1] + bytes([esp[-1] ^ 1])
        datagrams.append(esp)
    size = len(datagrams[0])
    assert all(len(d) == size for d in datagrams)
    if short_last:  # GRO's last datagram may be shorter: a smaller packet of its own
        _, last = peer.client_packet(seq=BASE + 40, payload=b"x", src="10.99.0.7")
        assert len(last) < size
        datagrams.append(last)
        meant.append(("seq", BASE + 40))
    a, b = peer.node_sa(window=64), peer.node_sa(window=64)
    for sa in (a, b):
        sa.restore(SaCounters(0, BASE, 0b1011))
    inner: list[bytes] = []
    drops: list[DropReason] = []
    assert a.open_run(b"".join(datagrams), 0, size, 5.0, inner, drops) == sum(
        map(len, datagrams))
    assert (inner, drops) == one_by_one(b, datagrams)
    # and what RFC 4303 §3.4.3 says: the replay check first, then the ICV, then the selectors
    highest, seen, expected = BASE, {BASE, BASE - 1, BASE - 3}, []
    for kind, seq in meant:
        if seq in seen:
            expected.append(DropReason.REPLAY)
        elif kind != "seq":
            expected.append(DropReason.INTEGRITY if kind == "forged" else DropReason.SELECTOR)
        else:
            seen.add(seq)
            highest = max(highest, seq)
    assert drops == expected
    assert a.counters().in_highest == highest and len(inner) == len(meant) - len(expected)
    assert state(a) == state(b)


def test_run_stops_at_another_spi() -> None:
    peer = make_peer("aes128gcm16", None, esn=False, udp=True)
    sa = peer.node_sa()
    _, first = peer.client_packet(seq=1)
    _, second = peer.client_packet(seq=2)
    other = (SPI_IN + 1).to_bytes(4) + second[4:]
    inner: list[bytes] = []
    drops: list[DropReason] = []
    buf = first + other + second
    assert sa.open_run(buf, 0, len(first), 1.0, inner, drops) == len(first)
    assert len(inner) == 1 and drops == []
    # resumed past the stranger, the rest of the run opens
    assert sa.open_run(buf, 2 * len(first), len(first), 1.0, inner, drops) == len(buf)
    assert len(inner) == 2 and sa.counters().in_highest == 2


def test_refused_run_changes_nothing() -> None:
    peer = make_peer("aes256gcm16", None, esn=True, udp=True)
    sa = peer.node_sa()
    _, good = peer.client_packet(seq=7)
    forged = good[:-1] + bytes([good[-1] ^ 0x80])
    before = state(sa)
    inner: list[bytes] = []
    drops: list[DropReason] = []
    sa.open_run(forged * 3, 0, len(good), 1.0, inner, drops)
    assert inner == [] and drops == [DropReason.INTEGRITY] * 3
    assert state(sa) == before
