"""The Encrypted and Authenticated payload SK (RFC 7296 §3.14): AES-CBC + HMAC, and AEADs per
RFC 5282 (AES-GCM, 8-byte IV, 4-byte salt, AAD = IKE header through the SK generic header) and
RFC 7634 (ChaCha20-Poly1305, the same layout).

AEAD IVs are random 64-bit values: keyd instances continuing the same IKE SA share no counter,
and an IKE SA carries few messages, so a random IV is the safe choice here (RFC 5282 §3 only
requires uniqueness per key).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import constant_time, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from .buffer import Buffer
from .constants import Notify, PayloadType
from .errors import RemoteProtocolError
from .message import (
    GENERIC_HEADER_LENGTH,
    HEADER_LENGTH,
    Header,
    Message,
    payload_type_of,
    pull_payloads,
    push_header,
    push_payloads,
)
from .payloads import Payload, SkPayload
from .transforms import Encr, Integ

SALT_LEN = 4


@dataclass(frozen=True, slots=True)
class SkKeys:
    """Keys of one direction of an IKE SA: SK_e (salt included for AEADs) and SK_a."""

    encr: Encr
    integ: Integ | None
    enc_key: bytes
    integ_key: bytes


def _aead(keys: SkKeys) -> tuple[AESGCM | ChaCha20Poly1305, bytes]:
    key, salt = keys.enc_key[:-SALT_LEN], keys.enc_key[-SALT_LEN:]
    cipher = ChaCha20Poly1305(key) if keys.encr.name == "chacha20poly1305" else AESGCM(key)
    return cipher, salt


def _hmac(keys: SkKeys, data: bytes) -> hmac.HMAC:
    assert keys.integ is not None
    h = hmac.HMAC(keys.integ_key, keys.integ.hash())
    h.update(data)
    return h


def seal(
    header: Header, payloads: Sequence[Payload], keys: SkKeys, random: Callable[[int], bytes]
) -> bytes:
    """Serialise a message whose payloads all go inside SK."""
    inner = Buffer()
    push_payloads(inner, payloads)
    plain = inner.data()
    first = payload_type_of(payloads[0]) if payloads else 0
    if keys.encr.aead:
        plain += b"\0"  # no padding, pad length 0 (RFC 5282 §3)
        iv = random(keys.encr.iv_len)
        body_len = len(iv) + len(plain) + keys.encr.icv_len
    else:
        assert keys.integ is not None
        pad = (-(len(plain) + 1)) % 16
        plain += bytes(pad) + bytes([pad])
        iv = random(16)
        body_len = len(iv) + len(plain) + keys.integ.icv_len
    total = HEADER_LENGTH + GENERIC_HEADER_LENGTH + body_len
    out = Buffer()
    push_header(out, header, PayloadType.SK, total)
    out.push_uint8(first)  # SK's next-payload names the first inner payload (§3.14)
    out.push_uint8(0)
    out.push_uint16(GENERIC_HEADER_LENGTH + body_len)
    aad = out.data()
    if keys.encr.aead:
        cipher, salt = _aead(keys)
        sealed = cipher.encrypt(salt + iv, plain, aad)
        return aad + iv + sealed
    key = keys.enc_key
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    signed = aad + iv + enc.update(plain) + enc.finalize()
    assert keys.integ is not None
    return signed + _hmac(keys, signed).finalize()[: keys.integ.icv_len]


def open_sk(message: Message, sk: SkPayload, keys: SkKeys) -> list[Payload]:
    """Check and decrypt SK; integrity failure is RemoteProtocolError with notify None
    (drop silently, §2.21.2). Inner payloads are parsed (an SK inside SK is rejected)."""
    raw = message.raw
    data = sk.data
    aad = raw[: len(raw) - len(data)]
    if keys.encr.aead:
        n_iv, n_icv = keys.encr.iv_len, keys.encr.icv_len
        if len(data) < n_iv + n_icv + 1:
            raise RemoteProtocolError("SK payload too short", None)
        iv = data[:n_iv]
        cipher, salt = _aead(keys)
        try:
            plain = cipher.decrypt(salt + iv, data[n_iv:], aad)
        except InvalidTag:
            raise RemoteProtocolError("SK integrity check failed", None) from None
    else:
        assert keys.integ is not None
        n_icv = keys.integ.icv_len
        ct_len = len(data) - 16 - n_icv
        if ct_len < 16 or ct_len % 16:
            raise RemoteProtocolError("SK payload length", None)
        expected = _hmac(keys, raw[:-n_icv])
        try:
            _verify_truncated(expected, raw[-n_icv:])
        except InvalidSignature:
            raise RemoteProtocolError("SK integrity check failed", None) from None
        iv = data[:16]
        dec = Cipher(algorithms.AES(keys.enc_key), modes.CBC(iv)).decryptor()
        plain = dec.update(data[16 : 16 + ct_len]) + dec.finalize()
    pad_len = plain[-1]
    if pad_len + 1 > len(plain):
        raise RemoteProtocolError("SK padding length", Notify.INVALID_SYNTAX)
    inner = Buffer(plain[: len(plain) - pad_len - 1])
    payloads, nested = pull_payloads(inner, sk.first_inner)
    if nested is not None:
        raise RemoteProtocolError("SK payload inside SK", Notify.INVALID_SYNTAX)
    return payloads


def _verify_truncated(h: hmac.HMAC, icv: bytes) -> None:
    """Constant-time check of a truncated HMAC (RFC 4868 §2.1)."""
    if not constant_time.bytes_eq(h.finalize()[: len(icv)], icv):
        raise InvalidSignature
