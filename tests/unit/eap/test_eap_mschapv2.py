"""EAP codec, MS-CHAPv2 arithmetic and the EAP-MSCHAPv2 conversation, driven in one process."""

from __future__ import annotations

import json

import pytest

from keyd.eap import Authenticator, EapFailed, EapSucceeded, LocalEapError, Peer, SendToPeer, mschap
from keyd.eap.errors import RemoteEapError
from keyd.eap.packet import Code, EapPacket, EapType, pull_eap, push_eap

# RFC 2759 §9.2, https://www.rfc-editor.org/rfc/rfc2759#section-9.2
USER = "User"
PASSWORD = "clientPass"
AUTH_CHALLENGE = bytes.fromhex("5B5D7C7D7B3F2F3E3C2C602132262628")
PEER_CHALLENGE = bytes.fromhex("21402324255E262A28295F2B3A337C7E")
CHALLENGE = bytes.fromhex("D02E4386BCE91226")
PASSWORD_HASH = bytes.fromhex("44EBBA8D5312B8D611474411F56989AE")
NT_RESPONSE = bytes.fromhex("82309ECD8D708B5EA08FAA3981CD83544233114A3D85D6DF")
PASSWORD_HASH_HASH = bytes.fromhex("41C00C584BD2D91C4017A2A12FA59F3F")
AUTHENTICATOR_RESPONSE = "S=407A5589115FD0D6209F510FE9C04566932CDA56"

# RFC 3079 §3.5.3 (128-bit key), https://www.rfc-editor.org/rfc/rfc3079#section-3.5.3
MASTER_KEY = bytes.fromhex("FDECE3717A8C838CB388E527AE3CDD31")
SEND_START_KEY_128 = bytes.fromhex("8B7CDC149B993A1BA118CB153F56DCCB")


def test_rfc2759_vectors() -> None:
    assert mschap.nt_password_hash(PASSWORD) == PASSWORD_HASH
    assert mschap.hash_nt_password_hash(PASSWORD_HASH) == PASSWORD_HASH_HASH
    assert mschap.challenge_hash(PEER_CHALLENGE, AUTH_CHALLENGE, USER) == CHALLENGE
    assert mschap.challenge_response(CHALLENGE, PASSWORD_HASH) == NT_RESPONSE
    assert mschap.generate_nt_response(AUTH_CHALLENGE, PEER_CHALLENGE, USER,
                                       PASSWORD_HASH) == NT_RESPONSE
    assert mschap.authenticator_response(PASSWORD_HASH, NT_RESPONSE, PEER_CHALLENGE,
                                         AUTH_CHALLENGE, USER) == AUTHENTICATOR_RESPONSE


def test_rfc3079_vectors_and_msk() -> None:
    master = mschap.master_key(PASSWORD_HASH_HASH, NT_RESPONSE)
    assert master == MASTER_KEY
    # the sample's SendStartKey is the server's send key (= the client's receive key)
    assert mschap.asymmetric_start_key(master, 16, is_send=True, is_server=True) \
        == SEND_START_KEY_128
    assert mschap.asymmetric_start_key(master, 16, is_send=False, is_server=False) \
        == SEND_START_KEY_128
    msk = mschap.msk(PASSWORD_HASH, NT_RESPONSE)
    # strongSwan's GenerateMSK: MasterReceiveKey | MasterSendKey | 32 zero bytes
    assert len(msk) == 64
    assert msk[:16] == mschap.asymmetric_start_key(master, 16, is_send=False, is_server=True)
    assert msk[16:32] == SEND_START_KEY_128
    assert msk[32:] == bytes(32)


def test_domain_is_not_hashed() -> None:
    assert mschap.username_of("ACME\\User") == USER
    assert mschap.username_of("user@example.org") == "user@example.org"


def test_codec_round_trip_and_errors() -> None:
    p = EapPacket(Code.REQUEST, 7, EapType.IDENTITY, b"")
    assert pull_eap(push_eap(p)) == p
    assert pull_eap(bytes([3, 9, 0, 4])) == EapPacket(Code.SUCCESS, 9)
    for bad in (b"", b"\x01\x01\x00", b"\x01\x01\x00\x09\x01", b"\x03\x01\x00\x05\x00",
                b"\x07\x01\x00\x05\x01", b"\x01\x01\x00\x04"):
        with pytest.raises(RemoteEapError):
            pull_eap(bad)


def users(table: dict[str, str]):  # type: ignore[no-untyped-def]
    return table.get


def converse(auth: Authenticator, peer: Peer, first: SendToPeer,
             hop=None):  # type: ignore[no-untyped-def]
    """Carry packets both ways until the authenticator ends; `hop(auth)` may swap the
    authenticator (another keyd) between messages."""
    action = first
    while isinstance(action, SendToPeer):
        answer = peer.respond(action.packet)
        assert answer is not None
        if hop is not None:
            auth = hop(auth)
        action = auth.receive(answer)
    return action


def test_identity_then_mschapv2_success_same_msk() -> None:
    auth = Authenticator("mschapv2", password_for=users({"carol": "s3cret"}))
    first = auth.start()
    assert pull_eap(first.packet).type == EapType.IDENTITY  # type: ignore[union-attr]
    peer = Peer("carol", "s3cret")
    end = converse(auth, peer, first)  # type: ignore[arg-type]
    assert isinstance(end, EapSucceeded)
    assert end.identity == "carol"
    peer.respond(end.packet)
    assert peer.succeeded
    assert end.msk == peer.msk and len(end.msk) == 64


def test_known_identity_skips_identity_round() -> None:
    auth = Authenticator("mschapv2", identity="carol", password_for=users({"carol": "pw"}))
    first = auth.start()
    assert pull_eap(first.packet).type == EapType.MSCHAPV2  # type: ignore[union-attr]
    assert isinstance(converse(auth, Peer("carol", "pw"), first), EapSucceeded)  # type: ignore[arg-type]


@pytest.mark.parametrize(("user", "password", "reason"), [
    ("carol", "wrong", "bad password"),
    ("mallory", "s3cret", "unknown user"),
])
def test_refusals(user: str, password: str, reason: str) -> None:
    auth = Authenticator("mschapv2", password_for=users({"carol": "s3cret"}))
    peer = Peer(user, password)
    end = converse(auth, peer, auth.start())  # type: ignore[arg-type]
    assert isinstance(end, EapFailed)
    assert end.reason == reason
    assert pull_eap(end.packet).code == Code.FAILURE
    assert peer.respond(end.packet) is None and peer.failed
    assert auth.done


def test_peer_that_naks_mschapv2_is_refused() -> None:
    auth = Authenticator("mschapv2", identity="carol", password_for=users({"carol": "pw"}))
    request = pull_eap(auth.start().packet)  # type: ignore[union-attr]
    nak = EapPacket(Code.RESPONSE, request.identifier, EapType.NAK, bytes([EapType.TLS]))
    end = auth.receive(push_eap(nak))
    assert isinstance(end, EapFailed) and end.reason == "method refused"


def test_wrong_identifier_garbage_and_forged_success() -> None:
    auth = Authenticator("mschapv2", password_for=users({"carol": "pw"}))
    request = pull_eap(auth.start().packet)  # type: ignore[union-attr]
    wrong = EapPacket(Code.RESPONSE, (request.identifier + 1) & 0xFF, EapType.IDENTITY,
                      b"carol")
    assert isinstance(auth.receive(push_eap(wrong)), EapFailed)
    for garbage in (b"\x02", b"\xff" * 9, b"\x02\x00\x00\x06\x1a"):
        a = Authenticator("mschapv2", identity="carol", password_for=users({"carol": "pw"}))
        a.start()
        end = a.receive(garbage)
        assert isinstance(end, EapFailed) and end.reason == "bad message"
    # a peer must not accept a Success string the authenticator could not have made
    peer = Peer("carol", "pw")
    a = Authenticator("mschapv2", identity="carol", password_for=users({"carol": "other"}))
    peer.respond(a.start().packet)  # type: ignore[union-attr]
    forged = EapPacket(Code.REQUEST, 9, EapType.MSCHAPV2,
                       b"\x03\x00\x00\x2eS=" + b"0" * 40 + b" M=x")
    with pytest.raises(RemoteEapError):
        peer.respond(push_eap(forged))


def test_state_moves_to_another_instance_mid_conversation() -> None:
    """Every message goes to a new Authenticator restored from JSON (another keyd)."""
    lookup = users({"ACME\\carol": "pässword"})

    def hop(auth: Authenticator) -> Authenticator:
        record = json.loads(json.dumps(auth.export()))
        return Authenticator.restore(record, password_for=lookup)

    auth = Authenticator("mschapv2", password_for=lookup)
    peer = Peer("ACME\\carol", "pässword")
    end = converse(auth, peer, auth.start(), hop)  # type: ignore[arg-type]
    assert isinstance(end, EapSucceeded) and end.msk == peer.msk


def test_bad_state_record_and_misuse() -> None:
    with pytest.raises(LocalEapError):
        Authenticator.restore({"method": "mschapv2"}, password_for=users({}))
    with pytest.raises(LocalEapError):
        Authenticator("md5", password_for=users({}))
    auth = Authenticator("mschapv2", password_for=users({}))
    auth.start()
    with pytest.raises(LocalEapError):
        auth.start()
