"""The ESP transforms keyd negotiates, by the names the IKE side uses.

encr: "aes128gcm16" | "aes256gcm16" (RFC 4106), "chacha20poly1305" (RFC 7634),
"aes128" | "aes256" (AES-CBC, RFC 3602); integ: None for the AEADs, else "sha256" | "sha384" |
"sha512" (HMAC-SHA2-256-128 / 384-192 / 512-256, RFC 4868). Keys of the AEADs carry their
4-byte salt at the end, as IKEv2 derives them (RFC 4106 §8.1, RFC 7634 §3).

A `Cipher` seals and opens the part of an ESP packet after the SPI and sequence number; all
cryptography is `cryptography`'s.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import constant_time, hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher as _CryptoCipher
from cryptography.hazmat.primitives.ciphers import algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from cluster.esp.errors import DropReason, LocalProtocolError, RemoteProtocolError

SALT_LEN = 4
AEAD_IV_LEN = 8
CBC_IV_LEN = 16


@dataclass(frozen=True, slots=True)
class Suite:
    """Sizes of one ESP transform."""

    encr: str
    integ: str | None
    enc_key_len: int  # bytes, salt included for the AEADs
    integ_key_len: int  # bytes; 0 for the AEADs
    iv_len: int  # explicit IV carried in every packet
    icv_len: int  # AEAD tag or truncated HMAC
    align: int  # RFC 4303 §2.4: payload + pad + 2 is a multiple of this
    aead: bool


_ENCR: dict[str, tuple[int, int, int, bool]] = {
    # name: (key bytes incl. salt, iv bytes, alignment, aead)
    "aes128gcm16": (16 + SALT_LEN, AEAD_IV_LEN, 4, True),
    "aes256gcm16": (32 + SALT_LEN, AEAD_IV_LEN, 4, True),
    "chacha20poly1305": (32 + SALT_LEN, AEAD_IV_LEN, 4, True),
    "aes128": (16, CBC_IV_LEN, 16, False),
    "aes256": (32, CBC_IV_LEN, 16, False),
}

_INTEG: dict[str, tuple[type[hashes.HashAlgorithm], int, int]] = {
    # name: (hash, key bytes, truncated ICV bytes) — RFC 4868 §2.1.1, §2.6
    "sha256": (hashes.SHA256, 32, 16),
    "sha384": (hashes.SHA384, 48, 24),
    "sha512": (hashes.SHA512, 64, 32),
}

ENCR_NAMES = tuple(_ENCR)
INTEG_NAMES = tuple(_INTEG)


def suite(encr: str, integ: str | None) -> Suite:
    """The sizes of (encr, integ); LocalProtocolError for a combination ESP cannot run."""
    if encr not in _ENCR:
        raise LocalProtocolError(f"unknown ESP encryption {encr!r}; known: {', '.join(_ENCR)}")
    key_len, iv_len, align, aead = _ENCR[encr]
    if aead:
        if integ is not None:
            raise LocalProtocolError(f"{encr} is an AEAD: integ must be None, not {integ!r}")
        return Suite(encr, None, key_len, 0, iv_len, 16, align, True)
    if integ not in _INTEG:
        raise LocalProtocolError(f"{encr} needs integ in {', '.join(_INTEG)}, not {integ!r}")
    _, ikey_len, icv_len = _INTEG[integ]
    return Suite(encr, integ, key_len, ikey_len, iv_len, icv_len, align, False)


class Cipher:
    """Seals / opens `iv | ciphertext | icv` for one direction of one SA.

    `seal(iv, header, plaintext, seq_high)` returns iv + ciphertext + icv; `open(header, body,
    seq_high)` returns the plaintext (padding still on) or raises RemoteProtocolError
    (INTEGRITY). `header` is the 8-byte SPI | low sequence number; `seq_high` the high 32
    bits when ESN is on, else None (RFC 4303 §2.2.1, RFC 4106 §5, RFC 7634 §2.1).
    """

    suite: Suite

    def seal(self, iv: bytes, header: bytes, plaintext: bytes, seq_high: int | None) -> bytes:
        raise NotImplementedError

    def open(self, header: bytes, body: bytes, seq_high: int | None) -> bytes:
        raise NotImplementedError

    def fresh_iv(self, counter_iv: bytes) -> bytes:
        """The explicit IV for the next packet, given the sender's unique 8-byte IV."""
        raise NotImplementedError


class AeadCipher(Cipher):
    """AES-GCM-16 (RFC 4106) and ChaCha20-Poly1305 (RFC 7634): nonce = salt | explicit IV."""

    def __init__(self, s: Suite, key: bytes) -> None:
        self.suite = s
        self.salt = key[-SALT_LEN:]
        raw = key[:-SALT_LEN]
        self.aead: AESGCM | ChaCha20Poly1305 = (
            ChaCha20Poly1305(raw) if s.encr == "chacha20poly1305" else AESGCM(raw)
        )

    def fresh_iv(self, counter_iv: bytes) -> bytes:
        return counter_iv

    def seal(self, iv: bytes, header: bytes, plaintext: bytes, seq_high: int | None) -> bytes:
        aad = header if seq_high is None else header[:4] + seq_high.to_bytes(4) + header[4:]
        return iv + self.aead.encrypt(self.salt + iv, plaintext, aad)

    def open(self, header: bytes, body: bytes, seq_high: int | None) -> bytes:
        # RFC 4106 §5: AAD is SPI | seq (32) or SPI | seq high | seq low (ESN)
        aad = header if seq_high is None else header[:4] + seq_high.to_bytes(4) + header[4:]
        try:
            return self.aead.decrypt(self.salt + body[:AEAD_IV_LEN], body[AEAD_IV_LEN:], aad)
        except InvalidTag:
            raise RemoteProtocolError(DropReason.INTEGRITY) from None


class CbcHmacCipher(Cipher):
    """AES-CBC (RFC 3602) with HMAC-SHA2 truncated ICV (RFC 4868)."""

    def __init__(self, s: Suite, enc_key: bytes, integ_key: bytes) -> None:
        self.suite = s
        self._aes = algorithms.AES(enc_key)
        hash_cls, _, self._icv_len = _INTEG[str(s.integ)]
        self._mac = hmac.HMAC(integ_key, hash_cls())

    def fresh_iv(self, counter_iv: bytes) -> bytes:
        # RFC 3602 §2.3: the CBC IV must be unpredictable, so it is random, not a counter.
        return os.urandom(CBC_IV_LEN)

    def _icv(self, header: bytes, body: bytes, seq_high: int | None) -> bytes:
        mac = self._mac.copy()
        mac.update(header)
        mac.update(body)
        if seq_high is not None:
            # RFC 4303 §2.2.1: the high-order bits are appended for the ICV, never sent
            mac.update(seq_high.to_bytes(4))
        return mac.finalize()[: self._icv_len]

    def seal(self, iv: bytes, header: bytes, plaintext: bytes, seq_high: int | None) -> bytes:
        enc = _CryptoCipher(self._aes, modes.CBC(iv)).encryptor()
        body = iv + enc.update(plaintext) + enc.finalize()
        return body + self._icv(header, body, seq_high)

    def open(self, header: bytes, body: bytes, seq_high: int | None) -> bytes:
        icv_len = self._icv_len
        signed, icv = body[:-icv_len], body[-icv_len:]
        if not constant_time.bytes_eq(self._icv(header, signed, seq_high), icv):
            raise RemoteProtocolError(DropReason.INTEGRITY)
        ct = signed[CBC_IV_LEN:]
        if not ct or len(ct) % 16:
            raise RemoteProtocolError(DropReason.MALFORMED, "ciphertext is not whole AES blocks")
        dec = _CryptoCipher(self._aes, modes.CBC(signed[:CBC_IV_LEN])).decryptor()
        return dec.update(ct) + dec.finalize()


def make_cipher(s: Suite, enc_key: bytes, integ_key: bytes = b"") -> Cipher:
    """A cipher for one direction; LocalProtocolError if a key has the wrong length."""
    if len(enc_key) != s.enc_key_len:
        raise LocalProtocolError(
            f"{s.encr} needs a {s.enc_key_len}-byte encryption key, got {len(enc_key)}")
    if len(integ_key) != s.integ_key_len:
        raise LocalProtocolError(
            f"{s.integ} needs a {s.integ_key_len}-byte integrity key, got {len(integ_key)}")
    if s.aead:
        return AeadCipher(s, enc_key)
    return CbcHmacCipher(s, enc_key, integ_key)
