"""Message codec: round trips of every payload, strict lengths, and a fuzz test."""

from __future__ import annotations

import contextlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyd.ike.constants import ExchangeType, Flag, Notify, PayloadType
from keyd.ike.errors import IkeProtocolError
from keyd.ike.message import Header, pull_message, push_message
from keyd.ike.payloads import (
    AuthPayload,
    CertPayload,
    CertReqPayload,
    CpPayload,
    DeletePayload,
    IdiPayload,
    IdrPayload,
    KePayload,
    NoncePayload,
    NotifyPayload,
    Proposal,
    SaPayload,
    TrafficSelector,
    Transform,
    TsiPayload,
    TsrPayload,
    VendorPayload,
)
from keyd.ike.protect import SkKeys, open_sk, seal
from keyd.ike.transforms import ENCRS, INTEGS

ALL_PAYLOADS = [
    SaPayload((Proposal(1, 1, b"", (Transform(1, 20, 128), Transform(2, 5), Transform(4, 31))),
               Proposal(2, 3, b"\1\2\3\4", (Transform(1, 28), Transform(5, 0))))),
    KePayload(31, os.urandom(32)),
    NoncePayload(os.urandom(32)),
    IdiPayload(2, b"client.example.net"),
    IdrPayload(1, bytes([192, 0, 2, 1])),
    CertPayload(4, b"\x30\x00"),
    CertReqPayload(4, os.urandom(20)),
    AuthPayload(2, os.urandom(32)),
    NotifyPayload(Notify.REKEY_SA, b"", 3, b"\xaa\xbb\xcc\xdd"),
    NotifyPayload(Notify.INITIAL_CONTACT),
    DeletePayload(3, (b"\1\1\1\1", b"\2\2\2\2")),
    DeletePayload(1, ()),
    VendorPayload(b"strongSwan"),
    TsiPayload((TrafficSelector(7, 0, 0, 65535, bytes(4), b"\xff" * 4),)),
    TsrPayload((TrafficSelector(7, 17, 53, 53, bytes([10, 20, 0, 0]), bytes([10, 20, 255, 255])),
                TrafficSelector(8, 0, 0, 65535, bytes(16), b"\xff" * 16))),
    CpPayload(1, ((1, b""), (3, b""), (8, b""))),
]


def _header(**kw: int) -> Header:
    return Header(0x1122334455667788, 0, 0, kw.get("exchange", ExchangeType.IKE_SA_INIT),
                  kw.get("flags", Flag.INITIATOR), kw.get("message_id", 0))


def test_round_trip_every_payload() -> None:
    data = push_message(_header(), ALL_PAYLOADS)
    msg, sk = pull_message(data)
    assert sk is None
    assert list(msg.payloads) == ALL_PAYLOADS
    assert msg.header.length == len(data)
    assert push_message(msg.header, msg.payloads) == data


@pytest.mark.parametrize(
    "encr,integ",
    [("aes128", "sha256"), ("aes256", "sha384"), ("aes256", "sha512"),
     ("aes128gcm16", None), ("aes256gcm16", None), ("chacha20poly1305", None)],
)
def test_sk_round_trip_and_tamper(encr: str, integ: str | None) -> None:
    e, i = ENCRS[encr], INTEGS[integ] if integ else None
    keys = SkKeys(e, i, os.urandom(e.key_len), os.urandom(i.key_len) if i else b"")
    h = _header(exchange=ExchangeType.IKE_AUTH, message_id=1)
    data = seal(h, ALL_PAYLOADS, keys, os.urandom)
    msg, sk = pull_message(data)
    assert sk is not None and msg.header.next_payload == PayloadType.SK
    assert open_sk(msg, sk, keys) == ALL_PAYLOADS
    for pos in (5, 20, len(data) - 30, len(data) - 1):  # header, SK body, ICV
        bad = bytearray(data)
        bad[pos] ^= 0x01
        with pytest.raises(IkeProtocolError) as err:
            m2, sk2 = pull_message(bytes(bad))
            assert sk2 is not None
            open_sk(m2, sk2, keys)
        if pos != 20:
            assert err.value.notify is None  # integrity failure: silence (§2.21.2)
    other = SkKeys(e, i, os.urandom(e.key_len), os.urandom(i.key_len) if i else b"")
    with pytest.raises(IkeProtocolError):
        open_sk(msg, sk, other)


def test_length_mismatch_and_critical_unknown() -> None:
    data = push_message(_header(), [NoncePayload(bytes(32))])
    with pytest.raises(IkeProtocolError) as e:
        pull_message(data + b"\0")
    assert e.value.notify == Notify.INVALID_SYNTAX
    # an unknown payload type 99 marked critical
    body = bytes([0, 0x80, 0, 8]) + b"abcd"
    h = bytearray(push_message(_header(), []))
    h[16] = 99
    raw = bytes(h[:24]) + (28 + len(body)).to_bytes(4, "big") + body
    with pytest.raises(IkeProtocolError) as e:
        pull_message(raw)
    assert e.value.notify == Notify.UNSUPPORTED_CRITICAL_PAYLOAD
    # the same payload not critical is skipped
    raw = raw[:29] + b"\0" + raw[30:]
    msg, _ = pull_message(raw)
    assert len(msg.payloads) == 1


def test_major_version() -> None:
    data = bytearray(push_message(_header(), []))
    data[17] = 0x30
    with pytest.raises(IkeProtocolError) as e:
        pull_message(bytes(data))
    assert e.value.notify == Notify.INVALID_MAJOR_VERSION


VALID = push_message(_header(), ALL_PAYLOADS)


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_any_bytes(data: bytes) -> None:
    with contextlib.suppress(IkeProtocolError):
        pull_message(data)


@settings(max_examples=1500, deadline=None)
@given(st.integers(0, len(VALID) - 1), st.binary(min_size=1, max_size=8), st.booleans())
def test_fuzz_mutated_valid_message(pos: int, junk: bytes, truncate: bool) -> None:
    data = VALID[:pos] if truncate else VALID[:pos] + junk + VALID[pos + len(junk):]
    with contextlib.suppress(IkeProtocolError):
        pull_message(data)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_sk_contents(junk: bytes) -> None:
    """Whatever decrypts correctly but holds junk inside is still only a IkeProtocolError."""
    e = ENCRS["aes128gcm16"]
    keys = SkKeys(e, None, bytes(20), b"")
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    h = push_message(_header(exchange=ExchangeType.IKE_AUTH), [])
    total = len(h) + 4 + 8 + len(junk) + 16
    hdr = h[:16] + bytes([46]) + h[17:24] + total.to_bytes(4, "big")
    sk_hdr = bytes([junk[0] if junk else 0, 0]) + (total - 28).to_bytes(2, "big")
    aad = hdr + sk_hdr
    ct = AESGCM(bytes(16)).encrypt(bytes(4) + bytes(8), junk, aad)
    raw = aad + bytes(8) + ct
    try:
        msg, sk = pull_message(raw)
        assert sk is not None
        open_sk(msg, sk, keys)
    except IkeProtocolError:
        pass
