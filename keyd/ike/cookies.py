"""Stateless cookies of IKE_SA_INIT (RFC 7296 §2.6), sent once too many IKE SAs are
half-open: Cookie = <VersionIDofSecret> | Hash(Ni | IPi | SPIi | <secret>), the secret
replaced every `lifetime_s` and the one before it still accepted."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from cryptography.hazmat.primitives import constant_time

from .ikesa import Address
from .keys import prf
from .transforms import PRFS

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


def _cookie(version: int, secret: bytes, ni: bytes, src: Address, spi_i: int) -> bytes:
    data = ni + ipaddress.ip_address(src[0]).packed + spi_i.to_bytes(8, "big")
    return bytes([version]) + prf(PRFS["prfsha256"], secret, data)[:16]
