"""The EAP packet (RFC 3748 §4): code, identifier, length, and for requests and responses a
type and its data. `pull_eap` / `push_eap` are the codec; everything above works on
`EapPacket`."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from .errors import RemoteEapError

_HEADER = struct.Struct("!BBH")
MAX_LEN = 4096  # far above what MSCHAPv2 and Identity need; RADIUS fragments the rest


class Code(IntEnum):
    """RFC 3748 §4."""

    REQUEST = 1
    RESPONSE = 2
    SUCCESS = 3
    FAILURE = 4


class EapType(IntEnum):
    """RFC 3748 §5, IANA "Method Types"."""

    IDENTITY = 1
    NOTIFICATION = 2
    NAK = 3
    MD5_CHALLENGE = 4
    TLS = 13
    TTLS = 21
    PEAP = 25
    MSCHAPV2 = 26
    EXPANDED = 254


@dataclass(frozen=True, slots=True)
class EapPacket:
    """One EAP packet. `type` and `data` only for REQUEST and RESPONSE (None / b"" else)."""

    code: int
    identifier: int
    type: int | None = None
    data: bytes = b""


def pull_eap(data: bytes) -> EapPacket:
    """Parse one EAP packet; its Length field must cover `data` exactly (an EAP payload of IKE
    and a reassembled RADIUS EAP-Message both carry exactly one packet)."""
    if len(data) < _HEADER.size:
        raise RemoteEapError(f"EAP packet of {len(data)} bytes is truncated")
    code, identifier, length = _HEADER.unpack_from(data)
    if length != len(data):
        raise RemoteEapError(f"EAP length {length} but {len(data)} bytes")
    if code in (Code.SUCCESS, Code.FAILURE):
        if length != _HEADER.size:
            raise RemoteEapError(f"EAP {Code(code).name} with data")
        return EapPacket(code, identifier)
    if code not in (Code.REQUEST, Code.RESPONSE):
        raise RemoteEapError(f"unknown EAP code {code}")
    if length < _HEADER.size + 1:
        raise RemoteEapError("EAP request/response without a type")
    return EapPacket(code, identifier, data[4], bytes(data[5:]))


def push_eap(packet: EapPacket) -> bytes:
    if packet.code in (Code.SUCCESS, Code.FAILURE):
        return _HEADER.pack(packet.code, packet.identifier, _HEADER.size)
    if packet.type is None:
        raise ValueError("an EAP request/response needs a type")
    length = _HEADER.size + 1 + len(packet.data)
    if length > MAX_LEN:
        raise ValueError(f"EAP packet of {length} bytes")
    return _HEADER.pack(packet.code, packet.identifier, length) + bytes([packet.type]) \
        + packet.data


def identity_request(identifier: int) -> EapPacket:
    """RFC 3748 §5.1: the Request/Identity (no prompt)."""
    return EapPacket(Code.REQUEST, identifier, EapType.IDENTITY)


def identity_response(identifier: int, identity: str) -> EapPacket:
    return EapPacket(Code.RESPONSE, identifier, EapType.IDENTITY, identity.encode())


def read_identity(packet: EapPacket) -> str:
    """The identity of a Response/Identity: UTF-8 (RFC 3748 §5.1), at most 253 bytes so it
    fits a RADIUS User-Name, and not empty."""
    if packet.code != Code.RESPONSE or packet.type != EapType.IDENTITY:
        raise RemoteEapError("expected an EAP Response/Identity")
    raw = packet.data.split(b"\x00", 1)[0]
    if not raw or len(raw) > 253:
        raise RemoteEapError(f"EAP identity of {len(raw)} bytes", "unknown user")
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        raise RemoteEapError("EAP identity is not UTF-8", "unknown user") from exc


def success(identifier: int) -> EapPacket:
    return EapPacket(Code.SUCCESS, identifier)


def failure(identifier: int) -> EapPacket:
    return EapPacket(Code.FAILURE, identifier)
