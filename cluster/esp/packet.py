"""Wire formats around ESP: RFC 3948 UDP encapsulation, the ESP header, padding, inner IP.

RFC 3948 §2: a UDP/4500 payload is a NAT keepalive (the single byte 0xFF, §2.3), an IKE
message behind the 4-byte non-ESP marker of zeros (§2.2), or an ESP packet whose SPI (never
zero) starts the payload. RFC 4303 §2: SPI (4) | sequence number (4) | IV | payload | padding |
pad length (1) | next header (1) | ICV.
"""

from __future__ import annotations

from enum import Enum

from cluster.esp.errors import DropReason, EspProtocolError

ESP_HEADER_LEN = 8
NON_ESP_MARKER = b"\x00\x00\x00\x00"
KEEPALIVE = b"\xff"

NH_IPV4 = 4  # next header values in tunnel mode (IANA protocol numbers)
NH_IPV6 = 41
NH_NONE = 59  # RFC 4303 §2.6: dummy packet

# RFC 4303 §2.4: padding is 1, 2, 3, ... ; PADDING[n] is the n-byte padding
PADDING: tuple[bytes, ...] = tuple(bytes(range(1, n + 1)) for n in range(256))


class Datagram(Enum):
    """What a UDP/4500 payload carries (RFC 3948)."""

    ESP = "esp"
    IKE = "ike"
    KEEPALIVE = "keepalive"


def classify_udp(payload: bytes) -> Datagram:
    """The kind of a UDP-encapsulated payload; MALFORMED if it is none of them."""
    if payload[:4] == NON_ESP_MARKER:
        if len(payload) < 4 + 28:  # marker + IKE header (RFC 7296 §3.1)
            raise EspProtocolError(DropReason.MALFORMED, "short IKE message after marker")
        return Datagram.IKE
    if len(payload) >= ESP_HEADER_LEN:
        return Datagram.ESP
    if payload == KEEPALIVE:
        return Datagram.KEEPALIVE
    raise EspProtocolError(DropReason.MALFORMED, f"{len(payload)}-byte UDP/4500 payload")


def push_udp_ike(message: bytes) -> bytes:
    """An IKE message as a UDP/4500 payload: behind the non-ESP marker."""
    return NON_ESP_MARKER + message


def pull_ike_from_udp(payload: bytes) -> bytes:
    """The IKE message inside a UDP/4500 payload classified as IKE."""
    return payload[4:]


def pull_spi(esp: bytes) -> int:
    """The SPI of an ESP packet (at least the 8-byte header is present)."""
    return int.from_bytes(esp[:4])


def pull_inner(plaintext: bytes) -> bytes:
    """The inner IP packet of a decrypted ESP payload, its trailer stripped and checked
    (`inner_length`)."""
    return plaintext[:inner_length(plaintext)]


def inner_length(plaintext: bytes) -> int:
    """The length of the inner IP packet that starts a decrypted ESP payload.

    Checks the pad length and the padding bytes (RFC 4303 §2.4) and the next header of tunnel
    mode (4 or 41; 59 is a dummy packet, RFC 4303 §2.6); the inner packet is cut to the
    length its own header states, so TFC padding (RFC 4303 §2.7) is tolerated.
    """
    if len(plaintext) < 2:
        raise EspProtocolError(DropReason.MALFORMED, "no ESP trailer")
    padlen = plaintext[-2]
    nh = plaintext[-1]
    end = len(plaintext) - 2 - padlen
    if end < 0:
        raise EspProtocolError(DropReason.BAD_PADDING, f"pad length {padlen} > payload")
    if padlen and plaintext[end:-2] != PADDING[padlen]:
        raise EspProtocolError(DropReason.BAD_PADDING, "padding is not 1, 2, 3, ...")
    if nh == NH_IPV4:
        if end < 20 or plaintext[0] >> 4 != 4:
            raise EspProtocolError(DropReason.MALFORMED, "next header 4 without IPv4")
        total = (plaintext[2] << 8) | plaintext[3]
        if total < 20 or total > end:
            raise EspProtocolError(DropReason.MALFORMED, "inner IPv4 length")
        return total
    if nh == NH_IPV6:
        if end < 40 or plaintext[0] >> 4 != 6:
            raise EspProtocolError(DropReason.MALFORMED, "next header 41 without IPv6")
        total = 40 + ((plaintext[4] << 8) | plaintext[5])
        if total > end:
            raise EspProtocolError(DropReason.MALFORMED, "inner IPv6 length")
        return total
    if nh == NH_NONE:
        raise EspProtocolError(DropReason.DUMMY)
    raise EspProtocolError(DropReason.MALFORMED, f"next header {nh} in tunnel mode")


def push_trailer(inner: bytes, align: int) -> bytes:
    """inner | padding | pad length | next header, aligned for the cipher (RFC 4303 §2.4)."""
    version = inner[0] >> 4 if inner else 0
    nh = NH_IPV4 if version == 4 else NH_IPV6 if version == 6 else 0
    if not nh:
        raise ValueError("tunnel mode carries IPv4 or IPv6 packets only")
    padlen = -(len(inner) + 2) % align
    return inner + PADDING[padlen] + bytes((padlen, nh))


def inner_destination(inner: bytes) -> bytes:
    """The destination address of an IP packet, packed (4 or 16 bytes)."""
    return inner[16:20] if inner[0] >> 4 == 4 else inner[24:40]


def inner_source(inner: bytes) -> bytes:
    """The source address of an IP packet, packed (4 or 16 bytes)."""
    return inner[12:16] if inner[0] >> 4 == 4 else inner[8:24]
