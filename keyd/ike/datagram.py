"""A datagram and its addressing: what the IKE core sends and where a request came from
(its answer goes back the same way), the NAT detection hash of an address (RFC 7296 §2.23,
also MOBIKE's), and printable names of exchange and notify numbers."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes

from .constants import ExchangeType, Notify
from .ikesa import Address
from .message import Header


@dataclass(frozen=True, slots=True)
class Datagram:
    """A UDP payload to send from `src` to `dst` (the non-ESP marker included on NAT-T)."""

    data: bytes
    src: Address
    dst: Address


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Where a request came from and went to; its reply goes back the same way."""

    header: Header
    src: Address
    dst: Address


@functools.lru_cache(maxsize=4096)
def packed_ip(ip: str) -> bytes:
    """An address in network byte order (the same few addresses come back all the time:
    parsed once each)."""
    return ipaddress.ip_address(ip).packed


def nat_hash(spi_i: int, spi_r: int, addr: Address) -> bytes:
    """RFC 7296 §2.23: SHA-1(SPIi | SPIr | IP | Port)."""
    h = hashes.Hash(hashes.SHA1())
    h.update(spi_i.to_bytes(8, "big") + spi_r.to_bytes(8, "big") + packed_ip(addr[0])
             + addr[1].to_bytes(2, "big"))
    return h.finalize()


def exchange_name(exchange: int) -> str:
    try:
        return ExchangeType(exchange).name
    except ValueError:
        return f"EXCHANGE_{exchange}"


def notify_name(notify: int) -> str:
    try:
        return Notify(notify).name
    except ValueError:
        return f"NOTIFY_{notify}"


def random_spi(random: Callable[[int], bytes]) -> int:
    while True:
        spi = int.from_bytes(random(4), "big")
        if spi >= 256:  # 1..255 are reserved (RFC 4303 §2.1)
            return spi
