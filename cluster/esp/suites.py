"""The ESP transforms keyd negotiates, by the names the IKE side uses.

encr: "aes128gcm16" | "aes192gcm16" | "aes256gcm16" and the 8- and 12-byte ICV variants
"aes128gcm8", "aes128gcm12", … (RFC 4106), "chacha20poly1305" (RFC 7634), "aes128" | "aes192" |
"aes256" (AES-CBC, RFC 3602), "aes128ctr" | "aes192ctr" | "aes256ctr" (AES-CTR, RFC 3686) and
"3des" (RFC 2451, legacy); integ: None for the AEADs, else "sha256" | "sha384" | "sha512"
(HMAC-SHA2-256-128 / 384-192 / 512-256, RFC 4868), "sha1" (HMAC-SHA1-96, RFC 2404) or
"aescmac" (AES-CMAC-96, RFC 4494). Keys of the AEADs carry their 4-byte salt at the end, and
AES-CTR keys their 4-byte nonce, as IKEv2 derives them (RFC 4106 §8.1, RFC 7634 §3,
RFC 3686 §5.1).

A `Cipher` seals and opens the part of an ESP packet after the SPI and sequence number; all
cryptography is `cryptography`'s.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import cmac, constant_time, hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher as _CryptoCipher
from cryptography.hazmat.primitives.ciphers import algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from cluster.esp.errors import DropReason, EspProtocolError, EspUsageError

SALT_LEN = 4  # also the AES-CTR nonce (RFC 3686 §4)
AEAD_IV_LEN = 8
CBC_IV_LEN = 16


@dataclass(frozen=True, slots=True)
class Suite:
    """Sizes of one ESP transform."""

    encr: str
    integ: str | None
    enc_key_len: int  # bytes, salt / nonce included for the AEADs and AES-CTR
    integ_key_len: int  # bytes; 0 for the AEADs
    iv_len: int  # explicit IV carried in every packet
    icv_len: int  # AEAD tag or truncated MAC
    align: int  # RFC 4303 §2.4: payload + pad + 2 is a multiple of this
    aead: bool
    kind: str  # "aes-gcm" | "chacha20-poly1305" | "aes-cbc" | "aes-ctr" | "3des-cbc"


@dataclass(frozen=True, slots=True)
class _Encr:
    key_len: int  # bytes incl. salt / nonce
    iv_len: int
    align: int
    kind: str
    icv_len: int = 0  # AEAD tag


def _aes() -> dict[str, _Encr]:
    out = {}
    for bits in (128, 192, 256):
        k = bits // 8
        out[f"aes{bits}"] = _Encr(k, CBC_IV_LEN, 16, "aes-cbc")
        out[f"aes{bits}ctr"] = _Encr(k + SALT_LEN, 8, 4, "aes-ctr")  # RFC 3686 §3.2
        for icv in (8, 12, 16):
            out[f"aes{bits}gcm{icv}"] = _Encr(k + SALT_LEN, AEAD_IV_LEN, 4, "aes-gcm", icv)
    return out


_ENCR: dict[str, _Encr] = {
    **_aes(),
    "chacha20poly1305": _Encr(32 + SALT_LEN, AEAD_IV_LEN, 4, "chacha20-poly1305", 16),
    "3des": _Encr(24, 8, 8, "3des-cbc"),
}

_INTEG: dict[str, tuple[type[hashes.HashAlgorithm] | None, int, int]] = {
    # name: (hash, key bytes, truncated ICV bytes) — RFC 4868 §2.1.1, §2.6; RFC 2404; RFC 4494
    "sha1": (hashes.SHA1, 20, 12),
    "aescmac": (None, 16, 12),
    "sha256": (hashes.SHA256, 32, 16),
    "sha384": (hashes.SHA384, 48, 24),
    "sha512": (hashes.SHA512, 64, 32),
}

ENCR_NAMES = tuple(_ENCR)
INTEG_NAMES = tuple(_INTEG)


def suite(encr: str, integ: str | None) -> Suite:
    """The sizes of (encr, integ); EspUsageError for a combination ESP cannot run."""
    if encr not in _ENCR:
        raise EspUsageError(f"unknown ESP encryption {encr!r}; known: {', '.join(_ENCR)}")
    e = _ENCR[encr]
    if e.icv_len:
        if integ is not None:
            raise EspUsageError(f"{encr} is an AEAD: integ must be None, not {integ!r}")
        return Suite(encr, None, e.key_len, 0, e.iv_len, e.icv_len, e.align, True, e.kind)
    if integ not in _INTEG:
        raise EspUsageError(f"{encr} needs integ in {', '.join(_INTEG)}, not {integ!r}")
    _, ikey_len, icv_len = _INTEG[integ]
    return Suite(encr, integ, e.key_len, ikey_len, e.iv_len, icv_len, e.align, False, e.kind)


class Cipher:
    """Seals / opens `iv | ciphertext | icv` for one direction of one SA.

    `seal(iv, header, plaintext, seq_high)` returns iv + ciphertext + icv; `open(header, body,
    seq_high)` returns the plaintext (padding still on) or raises EspProtocolError
    (INTEGRITY). `header` is the 8-byte SPI | low sequence number; `seq_high` the high 32
    bits when ESN is on, else None (RFC 4303 §2.2.1, RFC 4106 §5, RFC 7634 §2.1).
    """

    suite: Suite
    # the explicit IV must be unique, not unpredictable: the sender's 8-byte counter IV
    # (AEADs, AES-CTR: RFC 4106 §3.1, RFC 3686 §3.1) rather than a random one (CBC)
    counter_iv = True

    def seal(self, iv: bytes, header: bytes, plaintext: bytes, seq_high: int | None) -> bytes:
        raise NotImplementedError

    def open(self, header: bytes, body: bytes, seq_high: int | None) -> bytes:
        raise NotImplementedError

    def fresh_iv(self, counter_iv: bytes) -> bytes:
        """The explicit IV for the next packet, given the sender's unique 8-byte IV."""
        return counter_iv


def _aead_aad(header: bytes, seq_high: int | None) -> bytes:
    # RFC 4106 §5: AAD is SPI | seq (32) or SPI | seq high | seq low (ESN)
    return header if seq_high is None else header[:4] + seq_high.to_bytes(4) + header[4:]


class AeadCipher(Cipher):
    """AES-GCM-16 (RFC 4106) and ChaCha20-Poly1305 (RFC 7634): nonce = salt | explicit IV.
    `aead` is what `ChildSa` calls inline on its hot path."""

    def __init__(self, s: Suite, key: bytes) -> None:
        self.suite = s
        self.salt = key[-SALT_LEN:]
        raw = key[:-SALT_LEN]
        self.aead: AESGCM | ChaCha20Poly1305 = (
            ChaCha20Poly1305(raw) if s.kind == "chacha20-poly1305" else AESGCM(raw)
        )

    def seal(self, iv: bytes, header: bytes, plaintext: bytes, seq_high: int | None) -> bytes:
        return iv + self.aead.encrypt(self.salt + iv, plaintext, _aead_aad(header, seq_high))

    def open(self, header: bytes, body: bytes, seq_high: int | None) -> bytes:
        try:
            return self.aead.decrypt(self.salt + body[:AEAD_IV_LEN], body[AEAD_IV_LEN:],
                                     _aead_aad(header, seq_high))
        except InvalidTag:
            raise EspProtocolError(DropReason.INTEGRITY) from None


class ShortTagGcmCipher(Cipher):
    """AES-GCM with an 8- or 12-byte ICV (RFC 4106 §3.3): the full tag's first bytes."""

    def __init__(self, s: Suite, key: bytes) -> None:
        self.suite = s
        self.salt = key[-SALT_LEN:]
        self._key = key[:-SALT_LEN]
        self._gcm = AESGCM(self._key)
        self._icv_len = s.icv_len

    def seal(self, iv: bytes, header: bytes, plaintext: bytes, seq_high: int | None) -> bytes:
        sealed = self._gcm.encrypt(self.salt + iv, plaintext, _aead_aad(header, seq_high))
        return iv + sealed[: len(plaintext) + self._icv_len]

    def open(self, header: bytes, body: bytes, seq_high: int | None) -> bytes:
        iv, ct, tag = body[:AEAD_IV_LEN], body[AEAD_IV_LEN:-self._icv_len], \
            body[-self._icv_len:]
        mode = modes.GCM(self.salt + iv, tag, min_tag_length=self._icv_len)
        dec = _CryptoCipher(algorithms.AES(self._key), mode).decryptor()
        dec.authenticate_additional_data(_aead_aad(header, seq_high))
        try:
            return dec.update(ct) + dec.finalize()
        except InvalidTag:
            raise EspProtocolError(DropReason.INTEGRITY) from None


class EncryptMacCipher(Cipher):
    """AES-CBC (RFC 3602), AES-CTR (RFC 3686) or 3DES-CBC (RFC 2451) with a truncated HMAC
    (RFC 4868, RFC 2404) or AES-CMAC-96 (RFC 4494) over SPI | seq | IV | ciphertext."""

    def __init__(self, s: Suite, enc_key: bytes, integ_key: bytes) -> None:
        self.suite = s
        self._kind = s.kind
        self.counter_iv = s.kind == "aes-ctr"
        self._block = 1 if s.kind == "aes-ctr" else s.align
        self._nonce = b""
        if s.kind == "aes-ctr":
            self._nonce = enc_key[-SALT_LEN:]
            self._alg: algorithms.AES | TripleDES = algorithms.AES(enc_key[:-SALT_LEN])
        elif s.kind == "3des-cbc":
            self._alg = TripleDES(enc_key)
        else:
            self._alg = algorithms.AES(enc_key)
        hash_cls, _, self._icv_len = _INTEG[str(s.integ)]
        self._mac: hmac.HMAC | cmac.CMAC = hmac.HMAC(integ_key, hash_cls()) \
            if hash_cls is not None else cmac.CMAC(algorithms.AES(integ_key))

    def fresh_iv(self, counter_iv: bytes) -> bytes:
        if self.counter_iv:
            return counter_iv  # RFC 3686 §3.1: unique per key, so the sender's counter IV
        # RFC 3602 §2.3: the CBC IV must be unpredictable, so it is random, not a counter.
        return os.urandom(self.suite.iv_len)

    def _mode(self, iv: bytes) -> modes.CBC | modes.CTR:
        if self.counter_iv:
            # RFC 3686 §4: counter block = nonce | IV | block counter starting at 1
            return modes.CTR(self._nonce + iv + b"\0\0\0\1")
        return modes.CBC(iv)

    def _icv(self, header: bytes, body: bytes, seq_high: int | None) -> bytes:
        mac = self._mac.copy()
        mac.update(header)
        mac.update(body)
        if seq_high is not None:
            # RFC 4303 §2.2.1: the high-order bits are appended for the ICV, never sent
            mac.update(seq_high.to_bytes(4))
        return mac.finalize()[: self._icv_len]

    def seal(self, iv: bytes, header: bytes, plaintext: bytes, seq_high: int | None) -> bytes:
        enc = _CryptoCipher(self._alg, self._mode(iv)).encryptor()
        body = iv + enc.update(plaintext) + enc.finalize()
        return body + self._icv(header, body, seq_high)

    def open(self, header: bytes, body: bytes, seq_high: int | None) -> bytes:
        icv_len, iv_len = self._icv_len, self.suite.iv_len
        signed, icv = body[:-icv_len], body[-icv_len:]
        if not constant_time.bytes_eq(self._icv(header, signed, seq_high), icv):
            raise EspProtocolError(DropReason.INTEGRITY)
        ct = signed[iv_len:]
        if not ct or len(ct) % self._block:
            raise EspProtocolError(DropReason.MALFORMED, "ciphertext is not whole blocks")
        dec = _CryptoCipher(self._alg, self._mode(signed[:iv_len])).decryptor()
        return dec.update(ct) + dec.finalize()


def make_cipher(s: Suite, enc_key: bytes, integ_key: bytes = b"") -> Cipher:
    """A cipher for one direction; EspUsageError if a key has the wrong length."""
    if len(enc_key) != s.enc_key_len:
        raise EspUsageError(
            f"{s.encr} needs a {s.enc_key_len}-byte encryption key, got {len(enc_key)}")
    if len(integ_key) != s.integ_key_len:
        raise EspUsageError(
            f"{s.integ} needs a {s.integ_key_len}-byte integrity key, got {len(integ_key)}")
    if s.aead:
        if s.kind == "aes-gcm" and s.icv_len != 16:
            return ShortTagGcmCipher(s, enc_key)
        return AeadCipher(s, enc_key)
    return EncryptMacCipher(s, enc_key, integ_key)
