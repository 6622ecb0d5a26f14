"""The Encrypted and Authenticated payload SK (RFC 7296 §3.14): AES-CBC, AES-CTR (RFC 5930:
8-byte IV, 4-byte nonce at the end of SK_e, no padding) or 3DES-CBC with HMAC or AES-CMAC-96,
and AEADs per RFC 5282 (AES-GCM with 8-, 12- or 16-byte ICVs, 8-byte IV, 4-byte salt, AAD = IKE
header through the SK generic header) and RFC 7634 (ChaCha20-Poly1305, the same layout).

AEAD and AES-CTR IVs are random 64-bit values: keyd instances continuing the same IKE SA share
no counter, and an IKE SA carries few messages, so a random IV is the safe choice here (RFC 5282
§3 and RFC 5930 §2 only require uniqueness per key).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import constant_time, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from .buffer import Buffer
from .constants import Notify, PayloadType
from .errors import IkeProtocolError
from .keys import aes_cmac
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


def _aead_seal(keys: SkKeys, iv: bytes, plain: bytes, aad: bytes) -> bytes:
    key, salt = keys.enc_key[:-SALT_LEN], keys.enc_key[-SALT_LEN:]
    if keys.encr.kind == "chacha20-poly1305":
        return ChaCha20Poly1305(key).encrypt(salt + iv, plain, aad)
    # a truncated GCM tag is the full tag's first bytes (NIST SP 800-38D §5.2.1.2)
    return AESGCM(key).encrypt(salt + iv, plain, aad)[: len(plain) + keys.encr.icv_len]


def _aead_open(keys: SkKeys, iv: bytes, sealed: bytes, aad: bytes) -> bytes:
    """The plaintext; InvalidTag if the ICV does not verify."""
    key, salt = keys.enc_key[:-SALT_LEN], keys.enc_key[-SALT_LEN:]
    if keys.encr.kind == "chacha20-poly1305":
        return ChaCha20Poly1305(key).decrypt(salt + iv, sealed, aad)
    n_icv = keys.encr.icv_len
    if n_icv == 16:
        return AESGCM(key).decrypt(salt + iv, sealed, aad)
    body, tag = sealed[:-n_icv], sealed[-n_icv:]
    dec = Cipher(algorithms.AES(key), modes.GCM(salt + iv, tag, min_tag_length=n_icv)).decryptor()
    dec.authenticate_additional_data(aad)
    return dec.update(body) + dec.finalize()


def _crypter(keys: SkKeys, iv: bytes) -> Cipher:
    """The classic (non-AEAD) cipher of SK with its IV."""
    kind, key = keys.encr.kind, keys.enc_key
    if kind == "aes-ctr":
        # RFC 5930 §2 / RFC 3686 §4: counter block = nonce | IV | block counter from 1
        return Cipher(algorithms.AES(key[:-4]), modes.CTR(key[-4:] + iv + b"\0\0\0\1"))
    if kind == "3des-cbc":
        return Cipher(TripleDES(key), modes.CBC(iv))
    return Cipher(algorithms.AES(key), modes.CBC(iv))


def _run(ctx: CipherContext, data: bytes) -> bytes:
    return ctx.update(data) + ctx.finalize()


def _mac(keys: SkKeys, data: bytes) -> bytes:
    """The full-length HMAC or AES-CMAC of `data` under SK_a (truncated by the caller)."""
    assert keys.integ is not None
    if keys.integ.hash is None:
        return aes_cmac(keys.integ_key, data)  # AES-CMAC-96 (RFC 4494)
    h = hmac.HMAC(keys.integ_key, keys.integ.hash())
    h.update(data)
    return h.finalize()


def seal(
    header: Header, payloads: Sequence[Payload], keys: SkKeys, random: Callable[[int], bytes]
) -> bytes:
    """Serialise a message whose payloads all go inside SK."""
    inner = Buffer()
    push_payloads(inner, payloads)
    first = payload_type_of(payloads[0]) if payloads else 0
    return seal_plain(header, PayloadType.SK, first, b"", inner.data(), keys, random)


def sealed_overhead(keys: SkKeys, plain_len: int) -> int:
    """Bytes that IV, padding and ICV add to `plain_len` bytes of inner payloads."""
    if keys.encr.aead:
        return keys.encr.iv_len + 1 + keys.encr.icv_len
    assert keys.integ is not None
    padded = plain_len + 1 + (-(plain_len + 1)) % keys.encr.block_len
    return keys.encr.iv_len + padded - plain_len + keys.integ.icv_len


def seal_plain(
    header: Header, payload_type: int, first: int, prefix: bytes, plain: bytes, keys: SkKeys,
    random: Callable[[int], bytes],
) -> bytes:
    """Seal `plain` (serialised inner payloads, or a piece of them) as the last payload of
    type SK or SKF; `prefix` comes between its generic header and the IV (SKF: Fragment
    Number and Total Fragments, RFC 7383 §2.5) and is authenticated with the header."""
    if keys.encr.aead:
        plain += b"\0"  # no padding, pad length 0 (RFC 5282 §3)
        iv = random(keys.encr.iv_len)
        body_len = len(prefix) + len(iv) + len(plain) + keys.encr.icv_len
    else:
        assert keys.integ is not None
        pad = (-(len(plain) + 1)) % keys.encr.block_len
        plain += bytes(pad) + bytes([pad])
        iv = random(keys.encr.iv_len)
        body_len = len(prefix) + len(iv) + len(plain) + keys.integ.icv_len
    total = HEADER_LENGTH + GENERIC_HEADER_LENGTH + body_len
    out = Buffer()
    push_header(out, header, payload_type, total)
    out.push_uint8(first)  # SK's next-payload names the first inner payload (§3.14)
    out.push_uint8(0)
    out.push_uint16(GENERIC_HEADER_LENGTH + body_len)
    out.push_bytes(prefix)
    aad = out.data()
    if keys.encr.aead:
        return aad + iv + _aead_seal(keys, iv, plain, aad)
    signed = aad + iv + _run(_crypter(keys, iv).encryptor(), plain)
    assert keys.integ is not None
    return signed + _mac(keys, signed)[: keys.integ.icv_len]


def open_sk(message: Message, sk: SkPayload, keys: SkKeys) -> list[Payload]:
    """Check and decrypt SK; integrity failure is IkeProtocolError with notify None
    (drop silently, §2.21.2). Inner payloads are parsed (an SK inside SK is rejected)."""
    return pull_inner(open_plain(message, sk, keys), sk.first_inner)


def pull_inner(plain: bytes, first: int) -> list[Payload]:
    """The payloads of a decrypted SK (or of reassembled SKF fragments)."""
    payloads, nested = pull_payloads(Buffer(plain), first)
    if nested is not None:
        raise IkeProtocolError("SK payload inside SK", Notify.INVALID_SYNTAX)
    return payloads


def open_plain(message: Message, sk: SkPayload, keys: SkKeys) -> bytes:
    """Check and decrypt SK or SKF: the inner bytes, padding removed, not yet parsed.
    Integrity failure is IkeProtocolError with notify None."""
    raw = message.raw
    data = sk.data
    aad = raw[: len(raw) - len(data)]
    if keys.encr.aead:
        n_iv, n_icv = keys.encr.iv_len, keys.encr.icv_len
        if len(data) < n_iv + n_icv + 1:
            raise IkeProtocolError("SK payload too short", None)
        try:
            plain = _aead_open(keys, data[:n_iv], data[n_iv:], aad)
        except InvalidTag:
            raise IkeProtocolError("SK integrity check failed", None) from None
    else:
        assert keys.integ is not None
        n_icv, n_iv, block = keys.integ.icv_len, keys.encr.iv_len, keys.encr.block_len
        ct_len = len(data) - n_iv - n_icv
        if ct_len < block or ct_len % block:
            raise IkeProtocolError("SK payload length", None)
        try:
            _verify_truncated(_mac(keys, raw[:-n_icv]), raw[-n_icv:])
        except InvalidSignature:
            raise IkeProtocolError("SK integrity check failed", None) from None
        iv = data[:n_iv]
        plain = _run(_crypter(keys, iv).decryptor(), data[n_iv : n_iv + ct_len])
    pad_len = plain[-1]
    if pad_len + 1 > len(plain):
        raise IkeProtocolError("SK padding length", Notify.INVALID_SYNTAX)
    return plain[: len(plain) - pad_len - 1]


def _verify_truncated(mac: bytes, icv: bytes) -> None:
    """Constant-time check of a truncated MAC (RFC 4868 §2.1, RFC 4494 §2.1)."""
    if not constant_time.bytes_eq(mac[: len(icv)], icv):
        raise InvalidSignature
