"""Stateless cookies of IKE_SA_INIT (RFC 7296 §2.6), sent once too many IKE SAs are
half-open: Cookie = <VersionIDofSecret> | Hash(Ni | IPi | SPIi | <secret>), the secret
replaced every `lifetime_s` and the one before it still accepted.

`peek_init_request` reads what a stateless answer needs (SPIi, Ni, the COOKIE shown) from
the header and the generic payload headers alone — no proposal is parsed, no key exchange
made — so a flood of IKE_SA_INITs from spoofed sources costs little more than its cookies.
"""

from __future__ import annotations

import hmac
import ipaddress
import struct
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import constant_time

from .constants import ExchangeType, Flag, Notify, PayloadType
from .ikesa import Address

COOKIE_LEN = 1 + 16  # version byte | truncated HMAC


class Cookies:
    """The current and the previous secret; `make` rotates them when due."""

    def __init__(self, random: Callable[[int], bytes], lifetime_s: float) -> None:
        self._random = random
        self._lifetime_s = lifetime_s
        self._secrets: list[tuple[int, bytes]] = [(0, random(32))]
        self._rotate_at: float | None = None

    def make(self, ni: bytes, src: Address, spi_i: int, now: float) -> bytes:
        if self._rotate_at is None:
            self._rotate_at = now + self._lifetime_s
        elif now >= self._rotate_at:
            version = (self._secrets[0][0] + 1) % 256
            self._secrets = [(version, self._random(32)), self._secrets[0]]
            self._rotate_at = now + self._lifetime_s
        version, secret = self._secrets[0]
        return _cookie(version, secret, ni, src, spi_i)

    def valid(self, cookie: bytes, ni: bytes, src: Address, spi_i: int) -> bool:
        if len(cookie) != COOKIE_LEN:
            return False
        for version, secret in self._secrets:
            if cookie[0] == version:
                return constant_time.bytes_eq(cookie, _cookie(version, secret, ni, src, spi_i))
        return False


def _packed(ip: str) -> bytes:
    """An address in network byte order; dotted IPv4 without ipaddress's checks, which cost
    more than the HMAC (a flood's sources are all different, so no cache helps)."""
    if ":" not in ip:
        try:
            packed = bytes(map(int, ip.split(".")))
        except ValueError:
            packed = b""
        if len(packed) == 4:
            return packed
    return ipaddress.ip_address(ip).packed


def cookie_response(spi_i: int, cookie: bytes) -> bytes:
    """The IKE_SA_INIT response that asks for `cookie` (§2.6: a lone COOKIE notify), built
    in one go: the same bytes `push_message` makes of it, at a fraction of the cost."""
    notify = _GENERIC.pack(0, 0, _GENERIC.size + _NOTIFY.size + len(cookie)) \
        + _NOTIFY.pack(0, 0, Notify.COOKIE) + cookie
    return _HEADER.pack(spi_i, 0, PayloadType.NOTIFY, _VERSION, ExchangeType.IKE_SA_INIT,
                        Flag.RESPONSE, 0, _HEADER.size + len(notify)) + notify


def _cookie(version: int, secret: bytes, ni: bytes, src: Address, spi_i: int) -> bytes:
    data = ni + _packed(src[0]) + spi_i.to_bytes(8, "big")
    # prfsha256 (HMAC-SHA256), from the standard library: a few µs less per cookie
    return bytes([version]) + hmac.digest(secret, data, "sha256")[:16]


_HEADER = struct.Struct("!QQBBBBII")
_GENERIC = struct.Struct("!BBH")
_NOTIFY = struct.Struct("!BBH")
_VERSION = 0x20


@dataclass(frozen=True, slots=True)
class InitRequest:
    """What a stateless answer to an IKE_SA_INIT request needs (RFC 7296 §2.6)."""

    spi_i: int
    nonce: bytes | None   # Ni; None: no Nonce payload (the full path answers INVALID_SYNTAX)
    cookie: bytes         # the COOKIE notify's data if it comes first (§2.6), else b""


def peek_init_request(message: bytes) -> InitRequest | None:
    """The bare IKE message `message` as an IKE_SA_INIT request of IKEv2 whose payload
    chain adds up; None for anything else (the core's full path decides about it)."""
    if len(message) < _HEADER.size:
        return None
    spi_i, spi_r, next_payload, version, exchange, flags, message_id, length = \
        _HEADER.unpack_from(message)
    if spi_r or not spi_i or message_id or version != _VERSION or length != len(message) \
            or exchange != ExchangeType.IKE_SA_INIT \
            or flags & (Flag.RESPONSE | Flag.INITIATOR) != Flag.INITIATOR:
        return None
    at, nonce, cookie, first = _HEADER.size, None, b"", True
    while next_payload:
        if at + _GENERIC.size > length:
            return None
        following, _critical, size = _GENERIC.unpack_from(message, at)
        if size < _GENERIC.size or at + size > length:
            return None
        body = message[at + _GENERIC.size:at + size]
        if next_payload == PayloadType.NONCE:
            nonce = body
        elif first and next_payload == PayloadType.NOTIFY and len(body) >= _NOTIFY.size:
            _proto, spi_size, notify = _NOTIFY.unpack_from(body)
            if notify == Notify.COOKIE:
                cookie = body[_NOTIFY.size + spi_size:]
        next_payload, at, first = following, at + size, False
    if at != length:
        return None
    return InitRequest(spi_i, nonce, cookie)
