"""The responder driven by the project's initiator, in one process, on a virtual clock."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from ikepair import CLIENT, PSK, VIP, Clock, Side, psk_pair, run, transfer

from keyd.ike import (
    AddressRequested,
    AuthenticationFailed,
    ChildSa,
    ChildSaDeleted,
    ChildSaEstablished,
    Credentials,
    ExchangeFailed,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaRekeyed,
    IkeSaUpdated,
    IkeUsageError,
    Initiator,
    InitiatorConfig,
    Responder,
)
from keyd.ike.buffer import Buffer
from keyd.ike.constants import NON_ESP_MARKER, ExchangeType, Flag, Notify, PayloadType
from keyd.ike.message import Header, pull_message, push_header
from keyd.ike.protect import open_sk

PAIRS = [
    ("aes128gcm16-prfsha256-x25519", "aes128gcm16"),
    ("aes256-sha384-ecp384", "aes256-sha256"),
    ("chacha20poly1305-prfsha256-x25519", "chacha20poly1305"),
    ("aes128-sha256-modp2048", "aes128gcm16-esn"),
    ("aes256gcm16-prfsha512-ecp256", "aes256-sha512"),
    ("aes256-sha512-x25519", "aes128-sha384"),
]


def established(ike: str = "aes128gcm16-prfsha256-x25519", esp: str = "aes128gcm16",
                **kw: Any) -> tuple[Side, Side, Clock]:
    client, server = psk_pair(ike, esp, **kw)
    clock = Clock()
    client.endpoint.connect(CLIENT, VIP, clock.now)
    run(client, server, clock)
    assert client.of(IkeSaEstablished) and server.of(IkeSaEstablished)
    return client, server, clock


def child_pair(client: Side, server: Side) -> tuple[ChildSa, ChildSa]:
    return client.of(ChildSaEstablished)[-1].child, server.of(ChildSaEstablished)[-1].child


@pytest.mark.parametrize("ike,esp", PAIRS)
def test_psk_establishment_every_suite(ike: str, esp: str) -> None:
    client, server, _ = established(ike, esp)
    c, s = child_pair(client, server)
    assert (c.spi_in, c.spi_out) == (s.spi_out, s.spi_in)
    assert c.enc_key_out == s.enc_key_in and c.enc_key_in == s.enc_key_out
    assert c.integ_key_out == s.integ_key_in and c.integ_key_in == s.integ_key_out
    assert s.esn == esp.endswith("-esn")
    assert s.encr == esp.split("-")[0]
    assert s.virtual_ip == "10.99.0.1" and s.ts_remote == ("10.99.0.1/32",)
    assert s.ts_local == ("10.20.0.0/16",)
    assert s.identity == "client@example.net" and s.udp_encap
    assert server.endpoint.counters.handshakes["ok"] == 1
    assert isinstance(client.endpoint, Initiator) and client.endpoint.virtual_ip == "10.99.0.1"


def test_events_come_before_datagrams_and_float_to_4500() -> None:
    client, server = psk_pair()
    clock = Clock()
    client.endpoint.connect(CLIENT, VIP, clock.now)
    transfer(client, server, clock.now)
    with pytest.raises(IkeUsageError):
        server.endpoint.datagrams_to_send()  # IkeSaUpdated is pending: persist first
    ev = server.endpoint.next_event()
    assert isinstance(ev, IkeSaUpdated)
    assert server.endpoint.export_ike_sa(ev.ike_sa_id)["state"] == "half_open"
    reply = server.endpoint.datagrams_to_send()
    assert reply and reply[0].src == VIP and not reply[0].data.startswith(NON_ESP_MARKER)
    for d in reply:
        client.endpoint.receive_datagram(d.data, d.src, d.dst, clock.now)
    auth = client.drain()
    # NAT faked by the responder (force_udp_encap): the client floats to 4500 with the marker
    assert auth[0].dst == ("203.0.113.10", 4500) and auth[0].data.startswith(NON_ESP_MARKER)
    transfer(client, server, clock.now)  # this one was already drained: nothing moves
    for d in auth:
        server.endpoint.receive_datagram(d.data, d.src, d.dst, clock.now)
    kinds = [type(e) for e in server.pull_events()]
    assert kinds == [AddressRequested]
    assert server.endpoint.datagrams_to_send() == []  # IKE_AUTH waits for the address
    sa_id = server.of(AddressRequested)[0].ike_sa_id
    # the client said INITIAL_CONTACT: the pool may give it its old address again
    assert server.of(AddressRequested)[0].initial_contact
    # a retransmitted IKE_AUTH while the decision is pending is ignored
    for d in auth:
        server.endpoint.receive_datagram(d.data, d.src, d.dst, clock.now)
    assert server.endpoint.datagrams_to_send() == []
    server.endpoint.assign_address(sa_id, "10.99.0.7", clock.now)
    kinds = [type(e) for e in server.pull_events()]
    assert kinds == [IkeSaEstablished, ChildSaEstablished, IkeSaUpdated]
    out = server.endpoint.datagrams_to_send()
    assert out[0].src == ("203.0.113.10", 4500) and out[0].data.startswith(NON_ESP_MARKER)
    for d in out:
        client.endpoint.receive_datagram(d.data, d.src, d.dst, clock.now)
    assert client.pull_events() and client.endpoint.virtual_ip == "10.99.0.7"


def test_initiator_with_cas_sends_certreq_in_ike_auth() -> None:
    """RFC 7296 §3.7: an initiator that trusts CAs asks for the responder's certificate
    (a charon responder sends it only when asked), naming each CA by its key hash."""
    from ikepair import make_pki

    from keyd.ike import Initiator, InitiatorConfig
    from keyd.ike.auth import ca_keyid
    from keyd.ike.payloads import CertReqPayload
    pki = make_pki()
    client = Side(Initiator(InitiatorConfig(identity="client@example.net",
                                            credentials=Credentials(psk=PSK, cas=(pki.ca,)))))
    _, server = psk_pair()
    clock = Clock()
    client.endpoint.connect(CLIENT, VIP, clock.now)
    transfer(client, server, clock.now)
    server.pull_events()
    transfer(server, client, clock.now)
    auth = client.drain()[0].data[len(NON_ESP_MARKER):]
    ep = server.endpoint
    msg, sk = pull_message(auth)
    inner = open_sk(msg, sk, ep._keys_in(ep._sas[client.endpoint.ike_sa_id]))
    certreqs = [p for p in inner if isinstance(p, CertReqPayload)]
    assert len(certreqs) == 1 and certreqs[0].data == ca_keyid(pki.ca)


def test_no_fake_nat_when_not_forced() -> None:
    client, server, _ = established(force_udp_encap=False)
    _, s = child_pair(client, server)
    assert not s.udp_encap and s.peer_port == 500


def test_cp_dns_and_pool_exhausted() -> None:
    client, server = psk_pair()
    clock = Clock()
    client.endpoint.connect(CLIENT, VIP, clock.now)
    run(client, server, clock, pool=None)
    assert server.of(IkeSaEstablished)[0].virtual_ip is None
    assert not server.of(ChildSaEstablished)
    assert server.endpoint.counters.errors["INTERNAL_ADDRESS_FAILURE"] == 1


def test_retransmitted_requests_get_the_cached_response() -> None:
    client, server = psk_pair()
    clock = Clock()
    client.endpoint.connect(CLIENT, VIP, clock.now)
    init = client.drain()
    for d in init:
        server.endpoint.receive_datagram(d.data, d.src, d.dst, clock.now)
    first = server.drain()
    for d in init:  # IKE_SA_INIT retransmitted: same answer, no second SA
        server.endpoint.receive_datagram(d.data, d.src, d.dst, clock.now)
    again = server.drain()
    assert [d.data for d in again] == [d.data for d in first]
    assert len(server.endpoint.ike_sa_ids()) == 1
    for d in first:
        client.endpoint.receive_datagram(d.data, d.src, d.dst, clock.now)
    run(client, server, clock)
    # an INFORMATIONAL answered, then the same request again: byte-identical reply
    client.endpoint.liveness(clock.now)
    req = client.drain()
    for d in req:
        server.endpoint.receive_datagram(d.data, d.src, d.dst, clock.now)
    a = server.drain()
    for d in req:
        server.endpoint.receive_datagram(d.data, d.src, d.dst, clock.now)
    b = server.drain()
    assert a and [d.data for d in a] == [d.data for d in b]
    assert server.endpoint.counters.retransmits_answered == 2
    # a message ID outside the window is dropped
    server_sa = server.endpoint.ike_sa_ids()[0]
    state = server.endpoint.export_ike_sa(server_sa)
    assert state["peer_next_id"] == 3
    for d in a:
        client.endpoint.receive_datagram(d.data, d.src, d.dst, clock.now)


def test_initiator_retransmits_and_gives_up() -> None:
    client, _server = psk_pair()
    clock = Clock()
    client.endpoint.connect(CLIENT, VIP, clock.now)
    first = client.drain()
    sent = 1
    while client.endpoint.get_timer() is not None:
        clock.now = client.endpoint.get_timer()
        client.endpoint.handle_timer(clock.now)
        got = client.drain()
        if got:
            assert got[0].data == first[0].data
            sent += 1
    assert sent == 6 and client.of(IkeSaDeleted)
    assert client.endpoint.counters.retransmits_sent == 5


def test_half_open_expires() -> None:
    client, server = psk_pair()
    clock = Clock()
    client.endpoint.connect(CLIENT, VIP, clock.now)
    transfer(client, server, clock.now)
    server.drain()
    assert server.endpoint.counters.half_open == 1
    server.endpoint.handle_timer(clock.advance(31))
    server.drain()
    assert server.of(IkeSaDeleted) and server.endpoint.counters.half_open == 0


def test_cookie_above_half_open_threshold() -> None:
    client, server = psk_pair(half_open_cookie_threshold=1)
    clock = Clock()
    other, _ = psk_pair()
    other.endpoint.connect(("192.0.2.99", 500), VIP, clock.now)
    transfer(other, server, clock.now)  # one half-open SA: threshold reached
    server.drain()
    client.endpoint.connect(CLIENT, VIP, clock.now)
    transfer(client, server, clock.now)
    cookie_reply = server.drain()
    assert server.endpoint.counters.cookies_sent == 1
    assert len(server.endpoint.ike_sa_ids()) == 1  # no state for the cookie-less request
    for d in cookie_reply:
        client.endpoint.receive_datagram(d.data, d.src, d.dst, clock.now)
    run(client, server, clock)  # the initiator repeats IKE_SA_INIT with the cookie
    assert client.of(IkeSaEstablished) and server.endpoint.counters.cookies_sent == 1
    # a forged cookie from elsewhere does not pass
    spoof, _ = psk_pair()
    spoof.endpoint.connect(("192.0.2.77", 500), VIP, clock.now)
    transfer(spoof, server, clock.now)
    assert server.endpoint.counters.cookies_sent == 2


def test_invalid_ke_payload_retry() -> None:
    client, server = psk_pair(server_ike=["aes128gcm16-prfsha256-ecp256"])
    client.endpoint.config = InitiatorConfig(
        identity="client@example.net", credentials=Credentials(psk=PSK),
        ike_proposals=["aes128gcm16-prfsha256-x25519", "aes128gcm16-prfsha256-ecp256"])
    clock = Clock()
    client.endpoint.connect(CLIENT, VIP, clock.now)
    run(client, server, clock)
    assert server.endpoint.counters.errors["INVALID_KE_PAYLOAD"] == 1
    assert client.of(IkeSaEstablished)
    assert server.endpoint.export_ike_sa(server.of(IkeSaEstablished)[0].ike_sa_id)["suite"] \
        == "aes128gcm16-prfsha256-ecp256"


def test_no_proposal_chosen() -> None:
    client, server = psk_pair(server_ike=["aes256-sha512-ecp384"])
    clock = Clock()
    client.endpoint.connect(CLIENT, VIP, clock.now)
    run(client, server, clock)
    fail = client.of(ExchangeFailed)
    assert fail and fail[0].notify == Notify.NO_PROPOSAL_CHOSEN
    assert not server.endpoint.ike_sa_ids()


def test_wrong_psk_is_authentication_failed() -> None:
    client, server = psk_pair()
    client.endpoint.config = InitiatorConfig(
        identity="client@example.net", credentials=Credentials(psk=b"wrong"))
    clock = Clock()
    client.endpoint.connect(CLIENT, VIP, clock.now)
    run(client, server, clock)
    assert server.of(AuthenticationFailed) and server.of(IkeSaDeleted)
    kinds = [type(e) for e in server.events]
    assert kinds[-2:] == [AuthenticationFailed, IkeSaDeleted]  # no IkeSaUpdated in between
    assert client.of(ExchangeFailed)[0].notify == Notify.AUTHENTICATION_FAILED
    assert server.endpoint.counters.handshakes["failed"] == 1
    assert not server.endpoint.ike_sa_ids()


def test_esp_proposal_mismatch_keeps_ike_sa() -> None:
    client, server = psk_pair(server_esp=["chacha20poly1305"])
    clock = Clock()
    client.endpoint.connect(CLIENT, VIP, clock.now)
    run(client, server, clock)
    assert server.of(IkeSaEstablished) and not server.of(ChildSaEstablished)
    assert server.endpoint.counters.errors["NO_PROPOSAL_CHOSEN"] == 1


def test_ts_unacceptable() -> None:
    client, server = psk_pair()
    client.endpoint.config = InitiatorConfig(
        identity="client@example.net", credentials=Credentials(psk=PSK),
        ts_remote=["172.16.0.0/12"])
    clock = Clock()
    client.endpoint.connect(CLIENT, VIP, clock.now)
    run(client, server, clock)
    assert server.endpoint.counters.errors["TS_UNACCEPTABLE"] == 1
    assert not server.of(ChildSaEstablished)
    # the IKE SA stands on both sides; the initiator reports the missing Child SA
    assert client.of(IkeSaEstablished) and client.endpoint.ike_sa_ids()
    assert client.of(ExchangeFailed)[0].notify == Notify.TS_UNACCEPTABLE


@pytest.mark.parametrize("pfs", [False, True])
def test_child_rekey(pfs: bool) -> None:
    esp = ["aes128gcm16-x25519" if pfs else "aes128gcm16"]
    client, server, clock = established(server_esp=esp, client_esp=esp)
    old_c, old_s = child_pair(client, server)
    client.endpoint.rekey_child(old_c.spi_in, clock.now, pfs=pfs)
    run(client, server, clock)
    new_c, new_s = child_pair(client, server)
    assert new_s.replaces == old_s.spi_in and new_c.replaces == old_c.spi_in
    assert new_s.enc_key_in == new_c.enc_key_out != old_s.enc_key_in
    assert new_s.ts_remote == old_s.ts_remote
    # the initiator deleted the old SA: both sides report it
    assert [e.spi_in for e in server.of(ChildSaDeleted)] == [old_s.spi_in]
    assert [e.spi_in for e in client.of(ChildSaDeleted)] == [old_c.spi_in]
    sa = server.endpoint.export_ike_sa(new_s.ike_sa_id)
    assert [c["spi_in"] for c in sa["children"]] == [new_s.spi_in]


def test_rekey_of_unknown_child() -> None:
    client, server, clock = established()
    c, _ = child_pair(client, server)
    sa = client.endpoint.sa
    ghost = replace(sa.children.pop(c.spi_in), spi_in=c.spi_in ^ 0xFFFF)
    sa.children = {ghost.spi_in: ghost}  # an SPI the responder does not know
    client.endpoint.rekey_child(ghost.spi_in, clock.now)
    run(client, server, clock)
    assert server.endpoint.counters.errors["CHILD_SA_NOT_FOUND"] == 1
    assert client.of(ExchangeFailed)[-1].notify == Notify.CHILD_SA_NOT_FOUND


def test_ike_rekey_moves_children_and_deletes_old() -> None:
    client, server, clock = established()
    old_id = server.of(IkeSaEstablished)[0].ike_sa_id
    _, s = child_pair(client, server)
    client.endpoint.rekey_ike(clock.now)
    run(client, server, clock)
    rekeyed = server.of(IkeSaRekeyed)
    assert rekeyed and rekeyed[0].old_ike_sa_id == old_id
    new_id = rekeyed[0].new_ike_sa_id
    assert [c.spi_in for c in rekeyed[0].children] == [s.spi_in]
    assert rekeyed[0].children[0].ike_sa_id == new_id
    assert server.of(IkeSaDeleted)[-1].ike_sa_id == old_id
    assert not server.of(ChildSaDeleted)
    assert server.endpoint.ike_sa_ids() == [new_id] == [client.endpoint.sa.id]
    # the new IKE SA works: rekey a child over it, and liveness
    client.endpoint.rekey_child(s.spi_out, clock.now)
    run(client, server, clock)
    assert server.of(ChildSaEstablished)[-1].child.ike_sa_id == new_id


def test_deletes_and_liveness_initiated_by_the_responder() -> None:
    client, server, clock = established()
    sa_id = server.of(IkeSaEstablished)[0].ike_sa_id
    _, s = child_pair(client, server)
    server.endpoint.check_liveness(sa_id, clock.now)
    run(server, client, clock)
    assert server.endpoint.busy(sa_id) is False
    server.endpoint.delete_child_sa(sa_id, s.spi_in, clock.now)
    run(server, client, clock)
    assert server.of(ChildSaDeleted) and client.of(ChildSaDeleted)
    server.endpoint.delete_ike_sa(sa_id, clock.now)
    run(server, client, clock)
    assert server.of(IkeSaDeleted) and client.of(IkeSaDeleted)
    assert not server.endpoint.ike_sa_ids() and not client.endpoint.ike_sa_ids()


def test_delete_ike_sa_by_client() -> None:
    client, server, clock = established()
    _, s = child_pair(client, server)
    client.endpoint.delete(clock.now)
    run(client, server, clock)
    assert [e.spi_in for e in server.of(ChildSaDeleted)] == [s.spi_in]
    assert server.of(IkeSaDeleted)[0].reason == "deleted by peer"
    assert not server.endpoint.ike_sa_ids() and not client.endpoint.ike_sa_ids()


def test_unresponsive_peer_is_dropped_by_the_responder() -> None:
    _client, server, clock = established()
    sa_id = server.of(IkeSaEstablished)[0].ike_sa_id
    server.endpoint.check_liveness(sa_id, clock.now)
    server.drain()
    while (t := server.endpoint.get_timer()) is not None:
        server.endpoint.handle_timer(t)
        server.drain()
    assert server.of(IkeSaDeleted)[-1].reason == "peer does not answer"
    assert server.of(ChildSaDeleted)


def test_another_instance_continues_the_ike_sa() -> None:
    """Export after every step, import in a fresh responder: it answers a retransmit from
    the cache, then a rekey, liveness and delete, as if nothing happened."""
    client, server, clock = established()
    sa_id = server.of(IkeSaEstablished)[0].ike_sa_id
    client.endpoint.liveness(clock.now)
    req = client.drain()
    for d in req:
        server.endpoint.receive_datagram(d.data, d.src, d.dst, clock.now)
    answer = server.drain()
    record = json.loads(json.dumps(server.endpoint.export_ike_sa(sa_id)))
    other = Side(Responder(server.endpoint.config))
    assert other.endpoint.import_ike_sa(record) == sa_id
    for d in req:  # the answer was lost: the client retransmits to the new instance
        other.endpoint.receive_datagram(d.data, d.src, d.dst, clock.now)
    assert [d.data for d in other.drain()] == [d.data for d in answer]
    for d in answer:
        client.endpoint.receive_datagram(d.data, d.src, d.dst, clock.now)
    c, s = child_pair(client, server)
    client.endpoint.rekey_child(c.spi_in, clock.now)
    run(client, other, clock)
    assert other.of(ChildSaEstablished)[0].child.replaces == s.spi_in
    client.endpoint.rekey_ike(clock.now)
    run(client, other, clock)
    assert other.of(IkeSaRekeyed)
    client.endpoint.delete(clock.now)
    run(client, other, clock)
    assert not other.endpoint.ike_sa_ids()
    with pytest.raises(IkeUsageError):
        other.endpoint.import_ike_sa({"version": 1, "spi_i": "zz"})


def test_bad_input_is_counted_and_changes_nothing() -> None:
    client, server, clock = established()
    sa_id = server.of(IkeSaEstablished)[0].ike_sa_id
    before = server.endpoint.export_ike_sa(sa_id)
    ep = server.endpoint
    natt = ("203.0.113.10", 4500)
    src = ("192.0.2.10", 4500)
    ep.receive_datagram(b"\x12\x34\x56\x78" + bytes(40), src, natt, clock.now)  # ESP
    ep.receive_datagram(b"\xff", src, natt, clock.now)  # NAT keepalive
    ep.receive_datagram(NON_ESP_MARKER + b"junk", src, natt, clock.now)
    ep.receive_datagram(b"", src, VIP, clock.now)
    client.endpoint.liveness(clock.now)
    req = client.drain()[0]
    tampered = bytearray(req.data)
    tampered[-1] ^= 1
    ep.receive_datagram(bytes(tampered), req.src, req.dst, clock.now)
    wrong_spi = bytearray(req.data)
    wrong_spi[4 + 9] ^= 1
    ep.receive_datagram(bytes(wrong_spi), req.src, req.dst, clock.now)
    drops = ep.counters.drops
    assert drops["esp_on_ike_port"] == 1 and drops["natt_keepalive"] == 1
    assert drops["malformed"] == 2 and drops["integrity"] == 1 and drops["unknown_ike_sa"] == 1
    assert server.drain() == [] and ep.export_ike_sa(sa_id) == before
    ep.receive_datagram(req.data, req.src, req.dst, clock.now)  # the genuine one still works
    assert server.drain()


def test_api_misuse_is_local_protocol_error() -> None:
    client, server, clock = established()
    with pytest.raises(IkeUsageError):
        server.endpoint.export_ike_sa("00" * 16)
    with pytest.raises(IkeUsageError):
        server.endpoint.assign_address(server.endpoint.ike_sa_ids()[0], "10.0.0.1",
                                       clock.now)
    client.endpoint.liveness(clock.now)
    with pytest.raises(IkeUsageError):
        client.endpoint.liveness(clock.now)


def test_rekeyed_ike_sa_expires_when_the_peer_never_deletes_it() -> None:
    client, server, clock = established()
    old_id = server.of(IkeSaEstablished)[0].ike_sa_id
    client.endpoint.rekey_ike(clock.now)
    transfer(client, server, clock.now)
    transfer(server, client, clock.now)  # the answer arrives; the client sends DELETE ...
    client.drain()  # ... which is lost
    assert server.endpoint.export_ike_sa(old_id)["state"] == "rekeyed"
    assert server.endpoint.get_timer() == pytest.approx(clock.now + 60)
    server.endpoint.handle_timer(clock.advance(59))
    assert server.endpoint.has_ike_sa(old_id)
    server.endpoint.handle_timer(clock.advance(2))
    server.drain()
    assert not server.endpoint.has_ike_sa(old_id) and len(server.endpoint.ike_sa_ids()) == 1
    assert server.of(IkeSaDeleted)[-1].ike_sa_id == old_id and not server.of(ChildSaDeleted)
    assert server.endpoint.get_timer() is None


def test_authentic_request_with_unknown_critical_payload_is_answered() -> None:
    """§2.5: an authenticated request with an unknown critical payload gets
    UNSUPPORTED_CRITICAL_PAYLOAD naming the type; the message ID advances."""
    _client, server, clock = established()
    ep, sa_id = server.endpoint, server.of(IkeSaEstablished)[0].ike_sa_id
    sa = ep._sas[sa_id]
    keys = ep._keys_in(sa)  # the client's direction (AES-GCM)
    plain = bytes([0, 0x80, 0, 5]) + b"x" + b"\0"  # payload type 120, critical; pad length 0
    total = 28 + 4 + 8 + len(plain) + 16
    hdr = Header(sa.spi_i, sa.spi_r, PayloadType.SK, ExchangeType.INFORMATIONAL,
                 Flag.INITIATOR, 2, length=total)
    buf = Buffer()
    push_header(buf, hdr)
    aad = buf.data() + bytes([120, 0]) + (total - 28).to_bytes(2, "big")
    iv = bytes(8)
    ct = AESGCM(keys.enc_key[:-4]).encrypt(keys.enc_key[-4:] + iv, plain, aad)
    ep.receive_datagram(NON_ESP_MARKER + aad + iv + ct, sa.peer, sa.local, clock.now)
    server.pull_events()
    out = ep.datagrams_to_send()
    assert len(out) == 1 and ep.export_ike_sa(sa_id)["peer_next_id"] == 3
    msg, sk = pull_message(out[0].data[4:])
    answer = open_sk(msg, sk, ep._keys_out(sa))
    assert answer[0].type == Notify.UNSUPPORTED_CRITICAL_PAYLOAD and answer[0].data == b"\x78"


def test_responder_follows_the_peer_behind_a_nat() -> None:
    """§2.23: with NAT-T in use, an authentic request from a new address:port moves the SA
    (of a client without MOBIKE: tests/unit/ike/test_ike_mobike.py has the other kind)."""
    client, server, clock = established(mobike=False)
    sa_id = server.of(IkeSaEstablished)[0].ike_sa_id
    client.endpoint.liveness(clock.now)
    for d in client.drain():  # the NAT mapping changed: same client, new public port
        server.endpoint.receive_datagram(d.data, ("198.51.100.7", 31000), d.dst, clock.now)
    out = server.drain()
    assert out and out[0].dst == ("198.51.100.7", 31000)
    assert server.endpoint.export_ike_sa(sa_id)["peer"] == ["198.51.100.7", 31000]
    # an unauthenticated datagram from elsewhere does not move it
    server.endpoint.receive_datagram(NON_ESP_MARKER + bytes(60), ("192.0.2.66", 4500),
                                     ("203.0.113.10", 4500), clock.now)
    assert server.endpoint.export_ike_sa(sa_id)["peer"] == ["198.51.100.7", 31000]


def test_higher_major_version_gets_invalid_major_version() -> None:
    client, server = psk_pair()
    client.endpoint.connect(CLIENT, VIP, 0.0)
    init = bytearray(client.drain()[0].data)
    init[17] = 0x30  # IKEv3
    server.endpoint.receive_datagram(bytes(init), CLIENT, VIP, 0.0)
    out = server.drain()
    msg, _ = pull_message(out[0].data)
    assert msg.payloads[0].type == Notify.INVALID_MAJOR_VERSION
    assert msg.header.spi_i == int.from_bytes(init[:8], "big") and msg.header.is_response
    assert not server.endpoint.ike_sa_ids() and server.endpoint.counters.drops["version"] == 1


def test_forged_retransmission_is_not_answered() -> None:
    """Only an authentic copy of the last request gets the cached answer again."""
    client, server, clock = established()
    client.endpoint.liveness(clock.now)
    req = client.drain()[0]
    server.endpoint.receive_datagram(req.data, req.src, req.dst, clock.now)
    assert server.drain()
    forged = bytearray(req.data)
    forged[-3] ^= 0x40  # same SPIs and message ID, broken ICV
    server.endpoint.receive_datagram(bytes(forged), ("192.0.2.200", 4500), req.dst, clock.now)
    assert server.drain() == [] and server.endpoint.counters.drops["integrity"] == 1
    server.endpoint.receive_datagram(req.data, req.src, req.dst, clock.now)
    assert server.drain() and server.endpoint.counters.retransmits_answered == 1
