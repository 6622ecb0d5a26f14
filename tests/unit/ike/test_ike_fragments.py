"""IKE fragmentation (RFC 7383): the initiator and keyd's responder, a virtual clock, no
sockets. Certificate chains make IKE_AUTH messages far larger than a 576-byte path."""

from __future__ import annotations

import os
import tracemalloc
from dataclasses import replace
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ikepair import CERT_TIME, CLIENT, VIP, Clock, Side, make_pki, run, transfer

from keyd.ike import (
    AddressRequested,
    ChildSaEstablished,
    Credentials,
    Datagram,
    IkeSaEstablished,
    Initiator,
    InitiatorConfig,
    Responder,
    ResponderConfig,
)
from keyd.ike.constants import ExchangeType, Flag, PayloadType
from keyd.ike.errors import IkeProtocolError
from keyd.ike.fragments import FragmentLimits, split_datagrams
from keyd.ike.message import Header, pull_message
from keyd.ike.payloads import SkfPayload
from keyd.ike.protect import open_plain, pull_inner, seal_plain

MTU = 576
# the largest UDP payload (non-ESP marker and IKE message) in one IPv4 datagram of MTU bytes
LARGEST = MTU - 20 - 8


def _rsa() -> Any:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def creds() -> dict[str, Credentials]:
    """A CA, an intermediate, a gateway and a client certificate (RSA: large messages)."""
    pki = make_pki("rsa")
    ikey = _rsa()
    inter = pki.issue("Intermediate", [], ikey, ca=True)
    gw_key, cl_key = _rsa(), _rsa()
    gw = pki.issue("vpn.example.net", [x509.DNSName("vpn.example.net")], gw_key,
                   issuer=(inter, ikey))
    cl = pki.issue("client", [x509.RFC822Name("client@example.net")], cl_key,
                   issuer=(inter, ikey))
    return {
        "gw": Credentials(cert=gw, private_key=gw_key, cert_chain=(inter,), cas=(pki.ca,),
                          clock=lambda: CERT_TIME),
        "client": Credentials(cert=cl, private_key=cl_key, cert_chain=(inter,),
                              cas=(pki.ca,), clock=lambda: CERT_TIME),
    }


def _server(creds: dict[str, Credentials], **kw: Any) -> Side:
    kw.setdefault("fragment_mtu", MTU)
    return Side(Responder(ResponderConfig(identity="vpn.example.net", credentials=creds["gw"],
                                          protected_networks=["10.20.0.0/16"], **kw)))


def _client(creds: dict[str, Credentials], fragmentation: bool = True, **kw: Any) -> Side:
    return Side(Initiator(InitiatorConfig(identity="client@example.net",
                                          credentials=creds["client"],
                                          fragmentation=fragmentation, fragment_mtu=MTU, **kw)))


def _skf(d: Datagram) -> bool:
    _, sk = pull_message(d.data[4:] if d.data.startswith(bytes(4)) else d.data)
    return sk is not None and sk.payload_type == PayloadType.SKF


def _to_auth(client: Side, server: Side, clock: Clock) -> list[Datagram]:
    """IKE_SA_INIT done; the client's IKE_AUTH (its datagrams) not yet delivered."""
    client.endpoint.connect(CLIENT, VIP, clock.now)
    transfer(client, server, clock.now)
    transfer(server, client, clock.now)
    return client.drain()


def _deliver(grams: list[Datagram], to: Side, now: float) -> None:
    """Hand datagrams to `to`; a responder's address requests are answered at once."""
    for d in grams:
        to.endpoint.receive_datagram(d.data, d.src, d.dst, now)
        for ev in to.pull_events():
            if isinstance(ev, AddressRequested):
                to.endpoint.assign_address(ev.ike_sa_id, "10.99.0.1", now)
    to.pull_events()


def test_large_ike_auth_is_fragmented_both_ways_and_establishes(creds: Any) -> None:
    client, server, clock = _client(creds), _server(creds), Clock()
    auth = _to_auth(client, server, clock)
    assert len(auth) > 3 and all(_skf(d) and len(d.data) <= LARGEST for d in auth)
    _deliver(auth[::-1], server, clock.now)  # any order
    run(client, server, clock)
    assert server.of(IkeSaEstablished) and client.of(IkeSaEstablished)
    assert client.of(ChildSaEstablished)
    answer = [d for d in server.sent if _skf(d)]
    assert len(answer) > 3 and all(len(d.data) <= LARGEST for d in answer)
    # the IKE SA remembers it (another keyd instance must fragment the same way)
    sa_id = server.of(IkeSaEstablished)[0].ike_sa_id
    assert server.endpoint.export_ike_sa(sa_id)["fragmentation"] is True
    assert server.endpoint.fragments.incomplete == 0


@pytest.mark.parametrize("suite", ["aes256-sha256-modp2048", "aes128gcm16-prfsha256-x25519",
                                   "3des-sha1-modp2048"])
def test_every_suite_fragments_within_the_mtu(creds: Any, suite: str) -> None:
    client = _client(creds, ike_proposals=[suite])
    server = _server(creds, ike_proposals=[suite])
    clock = Clock()
    client.endpoint.connect(CLIENT, VIP, clock.now)
    run(client, server, clock)
    assert server.of(IkeSaEstablished)
    sent = client.sent + server.sent
    assert sum(map(_skf, sent)) > 6 and max(len(d.data) for d in sent if _skf(d)) <= LARGEST


def test_no_fragments_to_a_peer_that_did_not_announce_them(creds: Any) -> None:
    client, server, clock = _client(creds, fragmentation=False), _server(creds), Clock()
    client.endpoint.connect(CLIENT, VIP, clock.now)
    run(client, server, clock)
    assert server.of(IkeSaEstablished)
    assert not any(map(_skf, client.sent + server.sent))
    # nor from a responder configured without them
    client, server = _client(creds), _server(creds, fragmentation=False)
    client.endpoint.connect(CLIENT, VIP, clock.now)
    run(client, server, clock)
    assert server.of(IkeSaEstablished) and not any(map(_skf, client.sent + server.sent))


def test_lost_fragments_are_retransmitted(creds: Any) -> None:
    client, server, clock = _client(creds), _server(creds), Clock()
    auth = _to_auth(client, server, clock)
    _deliver(auth[1:], server, clock.now)  # fragment 1 lost: nothing to answer yet
    assert not server.drain() and server.endpoint.fragments.incomplete == 1
    clock.advance(2.0)
    client.endpoint.handle_timer(clock.now)  # the initiator resends every fragment
    again = client.drain()
    assert len(again) == len(auth) and all(map(_skf, again))
    _deliver(again[:1], server, clock.now)  # completes the message, which is answered
    answer = server.drain()
    assert len(answer) > 1 and server.of(IkeSaEstablished)
    _deliver(again[1:], server, clock.now)  # the rest: fragments of an answered request
    assert not server.drain() and server.endpoint.counters.retransmits_answered == 0
    # the answer is lost; the initiator retransmits: fragment 1 brings the whole answer back,
    # the other fragments nothing more
    clock.advance(4.0)
    client.endpoint.handle_timer(clock.now)
    _deliver(client.drain(), server, clock.now)
    assert server.drain() and server.endpoint.counters.retransmits_answered == 1
    assert len(server.sent) - len(answer) - 1 == len(answer)  # 1: the IKE_SA_INIT answer
    _deliver(server.sent[-len(answer):], client, clock.now)
    assert client.of(IkeSaEstablished)


def test_another_instance_reassembles_and_resends_the_fragmented_answer(creds: Any) -> None:
    client, first, clock = _client(creds), _server(creds), Clock()
    auth = _to_auth(client, first, clock)
    first.drain()
    second = _server(creds)
    sa_id = client.endpoint.ike_sa_id
    second.endpoint.import_ike_sa(first.endpoint.export_ike_sa(sa_id))
    _deliver(auth, second, clock.now)
    answer = second.drain()
    assert len(answer) > 1 and second.of(IkeSaEstablished)
    # a third instance with the IKE SA as written after that answer resends it whole
    third = _server(creds)
    third.endpoint.import_ike_sa(second.endpoint.export_ike_sa(sa_id))
    _deliver(auth[:1], third, clock.now)
    assert [d.data for d in third.drain()] == [d.data for d in answer]


def test_limits_on_one_message(creds: Any) -> None:
    limits = FragmentLimits(max_fragments=4, max_message_bytes=100_000, timeout_s=5.0)
    client, server, clock = _client(creds), _server(creds, fragment_limits=limits), Clock()
    auth = _to_auth(client, server, clock)
    assert len(auth) > 4
    _deliver(auth, server, clock.now)
    drops = server.endpoint.counters.drops
    assert drops["fragment_too_many"] == len(auth) and not server.of(IkeSaEstablished)
    assert server.endpoint.fragments.incomplete == 0

    small = FragmentLimits(max_message_bytes=1000)
    client, server = _client(creds), _server(creds, fragment_limits=small)
    _deliver(_to_auth(client, server, clock), server, clock.now)
    assert server.endpoint.counters.drops["fragment_message_too_large"] >= 1
    assert server.endpoint.fragments.bytes_held <= 1000 and not server.of(IkeSaEstablished)

    # time: the first half now, the rest too late; the retransmission then completes
    client, server = _client(creds), _server(creds, fragment_limits=FragmentLimits(timeout_s=5.0))
    auth = _to_auth(client, server, clock)
    half = len(auth) // 2
    _deliver(auth[:half], server, clock.now)
    assert server.endpoint.counters.fragments_incomplete == 1  # the gauge keyd exports
    clock.advance(5.0)
    server.endpoint.handle_timer(clock.now)
    assert server.endpoint.fragments.incomplete == 0
    assert server.endpoint.counters.fragments_incomplete == 0
    assert server.endpoint.counters.drops["fragments_timed_out"] == 1
    _deliver(auth[half:], server, clock.now)
    assert not server.of(IkeSaEstablished)
    _deliver(auth[:half], server, clock.now)
    assert server.of(IkeSaEstablished), server.endpoint.counters


def test_a_larger_total_restarts_a_smaller_one_is_dropped(creds: Any) -> None:
    client, server, clock = _client(creds), _server(creds), Clock()
    auth = _to_auth(client, server, clock)
    # the same IKE_AUTH cut for a smaller MTU (RFC 7383 §2.5.2): more fragments
    sa = client.endpoint.sa
    client.endpoint._fragment_mtu = 400
    h = pull_message(auth[0].data[4:])[0].header
    smaller = client.endpoint._seal(sa, h, _auth_payloads(client, sa))
    finer = [replace(auth[0], data=bytes(4) + m) for m in split_datagrams(smaller)]
    assert len(finer) > len(auth)
    _deliver(finer[:2], server, clock.now)
    _deliver(auth[2:3], server, clock.now)  # stale: fewer fragments
    assert server.endpoint.counters.drops["fragment_total_mismatch"] == 1
    _deliver(auth[:2], server, clock.now)  # a restart with fewer is stale too
    _deliver(finer[2:], server, clock.now)
    assert server.of(IkeSaEstablished), server.endpoint.counters


def _auth_payloads(client: Side, sa: Any) -> list[Any]:
    """The payloads of the client's outstanding IKE_AUTH, decrypted from its fragments."""
    keys = client.endpoint._keys_out(sa)
    plain, first = b"", 0
    for m in split_datagrams(sa.outstanding):
        msg, skf = pull_message(m)
        assert skf is not None
        plain += open_plain(msg, skf, keys)
        first = first or skf.first_inner
    return pull_inner(plain, first)


def test_flood_of_fragments_that_never_complete_is_bounded(creds: Any) -> None:
    """Many IKE SAs, each sending all but the last fragment of its IKE_AUTH: the reassembler
    holds at most `max_incomplete` messages of at most `max_message_bytes` each (here 8 x
    16 KiB = 128 KiB of contents; measured with the per-fragment overhead below 256 KiB), and
    a normal client whose fragments arrive in the middle of the flood still connects."""
    limits = FragmentLimits(max_incomplete=8, max_message_bytes=16 * 1024)
    server, clock = _server(creds, fragment_limits=limits), Clock()
    flooders = []
    for _ in range(40):  # the flood's IKE SAs are made first: only fragments are measured
        fl = _client(creds)
        auth = _to_auth(fl, server, clock)
        flooders.append(auth[:-1])
    server.drain()
    fragments = server.endpoint.fragments
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    peak = 0
    normal = _client(creds)
    normal_auth: list[Datagram] = []
    for i, partial in enumerate(flooders):
        if i == 10:  # the normal client starts amid the flood
            normal_auth = _to_auth(normal, server, clock)
            server.drain()
        _deliver(partial, server, clock.now)
        if normal_auth:  # one of its fragments after each message of the flood
            _deliver(normal_auth[:1], server, clock.now)
            del normal_auth[:1]
        assert fragments.incomplete <= limits.max_incomplete
        assert fragments.bytes_held <= limits.memory_bound_bytes
        peak = max(peak, tracemalloc.get_traced_memory()[0] - base)
    tracemalloc.stop()
    assert peak < 2 * limits.memory_bound_bytes, peak
    assert fragments.incomplete == limits.max_incomplete
    assert server.endpoint.counters.drops["fragments_evicted"] >= 40 - limits.max_incomplete
    run(normal, server, clock)
    assert normal.of(IkeSaEstablished)


# ---- the reassembler fuzzed: authentic fragments with any numbers, totals and contents ----

def _psk_pair() -> tuple[Side, Side, Clock]:
    """A PSK IKE SA after IKE_SA_INIT, both sides announcing fragmentation."""
    psk = Credentials(psk=b"correct horse battery staple")
    server = Side(Responder(ResponderConfig(
        identity="vpn.example.net", credentials=psk, protected_networks=["10.20.0.0/16"],
        fragment_limits=FragmentLimits(max_fragments=8, max_message_bytes=2000,
                                       max_incomplete=3))))
    client = Side(Initiator(InitiatorConfig(identity="client@example.net", credentials=psk,
                                            fragmentation=True)))
    clock = Clock()
    _to_auth(client, server, clock)
    return client, server, clock


_FUZZ = _psk_pair()
fragment = st.tuples(st.integers(0, 12), st.integers(0, 12), st.sampled_from([0, 35, 41, 99]),
                     st.binary(max_size=300), st.integers(0, 3))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(fragment, max_size=12), st.lists(st.tuples(st.integers(0, 2000),
                                                          st.integers(0, 255)), max_size=3))
def test_fuzzed_fragments_parse_or_raise_the_remote_error(
        frags: list[tuple[int, int, int, bytes, int]], flips: list[tuple[int, int]]) -> None:
    client, server, clock = _FUZZ
    sa = client.endpoint.sa
    keys = client.endpoint._keys_out(sa)
    reassembler = server.endpoint.fragments
    for number, total, first, chunk, message_id in frags:
        h = Header(sa.spi_i, sa.spi_r, 0, ExchangeType.IKE_AUTH, Flag.INITIATOR, message_id)
        data = seal_plain(h, PayloadType.SKF, first,
                          number.to_bytes(2, "big") + total.to_bytes(2, "big"), chunk, keys,
                          os.urandom)
        for at, value in flips:
            if at < len(data):
                data = data[:at] + bytes([value]) + data[at + 1:]
        try:
            msg, skf = pull_message(data)
        except IkeProtocolError:
            continue
        if not isinstance(skf, SkfPayload):
            continue
        try:
            got = reassembler.open(sa.id, msg, skf, keys, clock.now)
        except IkeProtocolError:
            pass
        else:
            assert got is None or isinstance(got, list)
        # and the whole core takes it without raising, counting what it drops
        server.endpoint.receive_datagram(bytes(4) + data, (CLIENT[0], 4500), (VIP[0], 4500),
                                         clock.now)
        assert reassembler.incomplete <= reassembler.limits.max_incomplete
        assert reassembler.bytes_held <= reassembler.limits.memory_bound_bytes
    server.pull_events()
    server.endpoint.datagrams_to_send()


def test_split_datagrams_never_loops_on_damaged_bytes() -> None:
    one = bytes(24) + (40).to_bytes(4, "big") + bytes(12)
    assert split_datagrams(one + one) == [one, one]
    for bad in (bytes(40), bytes(24) + (9999).to_bytes(4, "big"), b"\1\2"):
        assert split_datagrams(one + bad) == [one, bad]
