"""The RADIUS codec and the EAP relay, driven directly: the server's answers are built here
with the codec's server half (the real FreeRADIUS is in tests/integration/eap)."""

from __future__ import annotations

import json

import pytest

from keyd.eap import (
    Authenticator,
    EapFailed,
    EapSucceeded,
    LocalEapError,
    RadiusRelay,
    RadiusServer,
    SendToPeer,
    SendToRadius,
    radius,
)
from keyd.eap.packet import Code, EapPacket, EapType, pull_eap, push_eap
from keyd.eap.radius import Attr, InvalidRadiusPacket, RadiusCode

SECRET = b"xyzzy5461"
SERVERS = [RadiusServer("192.0.2.10", 1812, SECRET), RadiusServer("192.0.2.11", 1812,
                                                                    b"other")]


def answer(request: SendToRadius, code: int, attrs: list[tuple[int, bytes]],
           secret: bytes = SECRET) -> bytes:
    packet = radius.pull_packet(request.datagram)
    return radius.push_response(code, packet.identifier, packet.authenticator, attrs, secret)


def test_request_carries_fragments_state_and_a_valid_message_authenticator() -> None:
    relay = RadiusRelay(SERVERS)
    eap = push_eap(EapPacket(Code.RESPONSE, 5, EapType.TLS, bytes(range(256)) * 3))
    relay.state = b"server-state"
    request = relay.start("carol", eap)
    packet = radius.pull_packet(request.datagram)
    assert packet.code == RadiusCode.ACCESS_REQUEST
    assert packet.first(Attr.USER_NAME) == b"carol"
    assert packet.first(Attr.STATE) == b"server-state"
    assert [len(v) for v in packet.values(Attr.EAP_MESSAGE)] == [253, 253, 253, 14]
    assert packet.eap_message() == eap
    # RFC 3579 §3.2: HMAC-MD5 over the packet with the Message-Authenticator zeroed
    raw = request.datagram
    mac = packet.first(Attr.MESSAGE_AUTHENTICATOR)
    assert mac is not None
    zeroed = raw.replace(mac, bytes(16))
    assert radius._hmac_md5(SECRET, zeroed) == mac


def test_challenge_then_accept_gives_msk_framed_ip_and_server_eap() -> None:
    auth = Authenticator("radius", identity="carol", relay=RadiusRelay(SERVERS))
    request = auth.start()
    assert isinstance(request, SendToRadius)
    eap_req = push_eap(EapPacket(Code.REQUEST, 42, EapType.MSCHAPV2, b"\x01" * 300))
    action = auth.radius_reply(answer(request, RadiusCode.ACCESS_CHALLENGE,
                                      [*radius.eap_attributes(eap_req), (Attr.STATE, b"s1")]))
    assert action == SendToPeer(eap_req)
    # another keyd continues: the record is JSON, secrets come from the configuration
    record = json.loads(json.dumps(auth.export()))
    auth = Authenticator.restore(record, relay=RadiusRelay(SERVERS))
    request = auth.receive(push_eap(EapPacket(Code.RESPONSE, 42, EapType.MSCHAPV2, b"\x02")))
    assert isinstance(request, SendToRadius)
    assert radius.pull_packet(request.datagram).first(Attr.STATE) == b"s1"
    authn = radius.pull_packet(request.datagram).authenticator
    recv, send = bytes(range(32)), bytes(range(32, 64))

    def mppe(kind: int, key: bytes, salt: bytes) -> tuple[int, bytes]:
        value = radius.encrypt_mppe_key(key, salt, authn, SECRET)
        return (Attr.VENDOR_SPECIFIC, radius.MICROSOFT.to_bytes(4, "big")
                + bytes([kind, 2 + len(value)]) + value)

    end = auth.radius_reply(answer(request, RadiusCode.ACCESS_ACCEPT, [
        (Attr.EAP_MESSAGE, push_eap(EapPacket(Code.SUCCESS, 42))),
        (Attr.FRAMED_IP_ADDRESS, bytes([10, 9, 0, 7])),
        mppe(radius.MS_MPPE_SEND_KEY, send, b"\x80\x01"),
        mppe(radius.MS_MPPE_RECV_KEY, recv, b"\x80\x02"),
    ]))
    assert isinstance(end, EapSucceeded)
    assert end.msk == recv + send  # strongSwan's eap-radius: Recv | Send
    assert end.virtual_ip == "10.9.0.7"
    assert pull_eap(end.packet) == EapPacket(Code.SUCCESS, 42)
    assert auth.done


def test_forged_or_stray_answers_are_dropped_not_fatal() -> None:
    auth = Authenticator("radius", identity="carol", relay=RadiusRelay(SERVERS))
    request = auth.start()
    assert isinstance(request, SendToRadius)
    reject = [(Attr.EAP_MESSAGE, push_eap(EapPacket(Code.FAILURE, 1)))]
    assert auth.radius_reply(answer(request, RadiusCode.ACCESS_REJECT, reject,
                                    b"wrong")) is None
    good = answer(request, RadiusCode.ACCESS_REJECT, reject)
    tampered = bytearray(good)
    tampered[-20] ^= 1
    for bad in (bytes(tampered), good[:10], b"", good[:1] + bytes([good[1] ^ 1]) + good[2:]):
        assert auth.radius_reply(bad) is None
    end = auth.radius_reply(good)
    assert isinstance(end, EapFailed) and end.reason == "radius reject"


def test_accept_without_keys_and_challenge_without_eap_fail() -> None:
    for code, reason in ((RadiusCode.ACCESS_ACCEPT, "radius no key"),
                         (RadiusCode.ACCESS_CHALLENGE, "radius error")):
        auth = Authenticator("radius", identity="carol", relay=RadiusRelay(SERVERS))
        request = auth.start()
        assert isinstance(request, SendToRadius)
        end = auth.radius_reply(answer(request, code, []))
        assert isinstance(end, EapFailed) and end.reason == reason


def test_timeout_moves_to_the_next_server_then_fails() -> None:
    auth = Authenticator("radius", identity="carol", relay=RadiusRelay(SERVERS))
    first = auth.start()
    assert isinstance(first, SendToRadius) and first.server == 0
    second = auth.radius_timeout()
    assert isinstance(second, SendToRadius) and second.server == 1
    assert radius.pull_packet(second.datagram).eap_message() \
        == radius.pull_packet(first.datagram).eap_message()
    end = auth.radius_timeout()
    assert isinstance(end, EapFailed) and end.reason == "radius timeout"
    assert pull_eap(end.packet).code == Code.FAILURE


def test_codec_rejects_malformed_packets_and_bad_state() -> None:
    for bad in (b"\x02\x01\x00\x30" + bytes(16), b"\x02\x01\x00\x16" + bytes(16) + b"\x01\x00",
                b"\x02\x01\x00\x17" + bytes(16) + b"\x01\x09\x00"):
        with pytest.raises(InvalidRadiusPacket):
            radius.pull_packet(bad)
    with pytest.raises(LocalEapError):
        RadiusRelay(SERVERS).restore({"server": 5})
    with pytest.raises(LocalEapError):
        RadiusRelay([])
