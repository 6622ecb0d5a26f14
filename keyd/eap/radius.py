"""The RADIUS packet (RFC 2865 §3, §5) as an EAP relay needs it: attributes, the Request and
Response Authenticators, Message-Authenticator (RFC 3579 §3.2), EAP-Message fragments
(RFC 3579 §3.1) and the MS-MPPE keys (RFC 2548 §2.4.2-3). MD5 and HMAC-MD5 through
`cryptography`. A packet that fails a check raises `InvalidRadiusPacket`: the relay drops it,
as RFC 2865 §3 says a client silently discards what it cannot verify."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from enum import IntEnum

from cryptography.hazmat.primitives import constant_time, hashes, hmac

from .errors import EapError

_HEADER = struct.Struct("!BBH16s")
MAX_LEN = 4096  # RFC 2865 §3
ATTR_MAX = 253  # value bytes per attribute
MICROSOFT = 311  # vendor id, RFC 2548


class InvalidRadiusPacket(EapError):
    """A RADIUS datagram that does not parse or verify: drop it."""


class RadiusCode(IntEnum):
    ACCESS_REQUEST = 1
    ACCESS_ACCEPT = 2
    ACCESS_REJECT = 3
    ACCESS_CHALLENGE = 11


class Attr(IntEnum):
    USER_NAME = 1
    NAS_IP_ADDRESS = 4
    NAS_PORT = 5
    SERVICE_TYPE = 6
    FRAMED_IP_ADDRESS = 8
    FRAMED_MTU = 12
    VENDOR_SPECIFIC = 26
    STATE = 24
    CLASS = 25
    SESSION_TIMEOUT = 27
    CALLED_STATION_ID = 30
    CALLING_STATION_ID = 31
    NAS_IDENTIFIER = 32
    NAS_PORT_TYPE = 61
    EAP_MESSAGE = 79
    MESSAGE_AUTHENTICATOR = 80


SERVICE_FRAMED = 2  # RFC 2865 §5.6
NAS_PORT_VIRTUAL = 5  # RFC 2865 §5.41
MS_MPPE_SEND_KEY = 16  # RFC 2548 §2.4.2
MS_MPPE_RECV_KEY = 17  # RFC 2548 §2.4.3


@dataclass(frozen=True, slots=True)
class RadiusPacket:
    code: int
    identifier: int
    authenticator: bytes = field(repr=False)
    attributes: tuple[tuple[int, bytes], ...]

    def values(self, attr: int) -> list[bytes]:
        return [v for t, v in self.attributes if t == attr]

    def first(self, attr: int) -> bytes | None:
        found = self.values(attr)
        return found[0] if found else None

    def eap_message(self) -> bytes | None:
        """RFC 3579 §3.1: the EAP-Message attributes, concatenated in order."""
        parts = self.values(Attr.EAP_MESSAGE)
        return b"".join(parts) if parts else None


def _md5(*parts: bytes) -> bytes:
    h = hashes.Hash(hashes.MD5())
    for part in parts:
        h.update(part)
    return h.finalize()


def _hmac_md5(key: bytes, data: bytes) -> bytes:
    h = hmac.HMAC(key, hashes.MD5())
    h.update(data)
    return h.finalize()


def _push_attributes(attributes: tuple[tuple[int, bytes], ...]) -> bytes:
    out = bytearray()
    for attr, value in attributes:
        if not value or len(value) > ATTR_MAX:
            raise ValueError(f"RADIUS attribute {attr} of {len(value)} bytes")
        out += bytes([attr, 2 + len(value)]) + value
    return bytes(out)


def eap_attributes(eap: bytes) -> list[tuple[int, bytes]]:
    """RFC 3579 §3.1: an EAP packet split into EAP-Message attributes of 253 bytes."""
    return [(Attr.EAP_MESSAGE, eap[i:i + ATTR_MAX]) for i in range(0, len(eap), ATTR_MAX)]


def push_request(identifier: int, authenticator: bytes,
                 attributes: list[tuple[int, bytes]], secret: bytes) -> bytes:
    """An Access-Request with a Message-Authenticator (RFC 3579 §3.2: required with
    EAP-Message), which is HMAC-MD5 over the packet with that field zero."""
    attrs = (*attributes, (Attr.MESSAGE_AUTHENTICATOR, bytes(16)))
    body = _push_attributes(tuple(attrs))
    length = _HEADER.size + len(body)
    if length > MAX_LEN:
        raise ValueError(f"Access-Request of {length} bytes")
    unsigned = _HEADER.pack(RadiusCode.ACCESS_REQUEST, identifier, length, authenticator) + body
    mac = _hmac_md5(secret, unsigned)
    return unsigned[:-16] + mac


def push_response(code: int, identifier: int, request_authenticator: bytes,
                  attributes: list[tuple[int, bytes]], secret: bytes) -> bytes:
    """A server's answer (what FreeRADIUS sends; the tests use it to build bad answers)."""
    attrs = (*attributes, (Attr.MESSAGE_AUTHENTICATOR, bytes(16)))
    body = _push_attributes(tuple(attrs))
    length = _HEADER.size + len(body)
    unsigned = _HEADER.pack(code, identifier, length, request_authenticator) + body
    body = body[:-16] + _hmac_md5(secret, unsigned)
    head = struct.pack("!BBH", code, identifier, length)
    response_auth = _md5(head, request_authenticator, body, secret)
    return head + response_auth + body


def pull_packet(data: bytes) -> RadiusPacket:
    if len(data) < _HEADER.size:
        raise InvalidRadiusPacket(f"RADIUS packet of {len(data)} bytes")
    code, identifier, length, authenticator = _HEADER.unpack_from(data)
    # RFC 2865 §3: octets past Length are padding and ignored; fewer is an error
    if length < _HEADER.size or length > len(data) or length > MAX_LEN:
        raise InvalidRadiusPacket(f"RADIUS length {length} in {len(data)} bytes")
    attributes = []
    pos = _HEADER.size
    while pos < length:
        if pos + 2 > length or data[pos + 1] < 2 or pos + data[pos + 1] > length:
            raise InvalidRadiusPacket("RADIUS attribute runs past the packet")
        attributes.append((data[pos], bytes(data[pos + 2:pos + data[pos + 1]])))
        pos += data[pos + 1]
    return RadiusPacket(code, identifier, authenticator, tuple(attributes))


def verify_response(data: bytes, identifier: int, request_authenticator: bytes,
                    secret: bytes) -> RadiusPacket:
    """Parse a server's answer to our request and check it is the answer (RFC 2865 §3
    Response Authenticator, RFC 3579 §3.2 Message-Authenticator, required with EAP)."""
    packet = pull_packet(data)
    if packet.code not in (RadiusCode.ACCESS_ACCEPT, RadiusCode.ACCESS_REJECT,
                           RadiusCode.ACCESS_CHALLENGE):
        raise InvalidRadiusPacket(f"RADIUS code {packet.code} is not an answer")
    if packet.identifier != identifier:
        raise InvalidRadiusPacket(f"RADIUS identifier {packet.identifier}, expected "
                                  f"{identifier}")
    length = struct.unpack_from("!H", data, 2)[0]
    raw = bytes(data[:length])
    expected = _md5(raw[:4], request_authenticator, raw[20:], secret)
    if not constant_time.bytes_eq(expected, packet.authenticator):
        raise InvalidRadiusPacket("RADIUS Response Authenticator does not verify")
    macs = packet.values(Attr.MESSAGE_AUTHENTICATOR)
    if len(macs) != 1 or len(macs[0]) != 16:
        raise InvalidRadiusPacket("RADIUS answer without one Message-Authenticator")
    pos = _mac_offset(raw)
    zeroed = raw[:4] + request_authenticator + raw[20:pos] + bytes(16) + raw[pos + 16:]
    if not constant_time.bytes_eq(_hmac_md5(secret, zeroed), macs[0]):
        raise InvalidRadiusPacket("RADIUS Message-Authenticator does not verify")
    return packet


def _mac_offset(raw: bytes) -> int:
    pos = _HEADER.size
    while pos < len(raw):
        if raw[pos] == Attr.MESSAGE_AUTHENTICATOR:
            return pos + 2
        pos += raw[pos + 1]
    raise InvalidRadiusPacket("no Message-Authenticator")


def mppe_key(packet: RadiusPacket, vendor_type: int, request_authenticator: bytes,
             secret: bytes) -> bytes | None:
    """RFC 2548 §2.4.2-3: an MS-MPPE-Send/Recv-Key decrypted (Salt, then the key length byte,
    the key and padding, encrypted with MD5(secret | Request Authenticator | Salt) chained)."""
    for vsa in packet.values(Attr.VENDOR_SPECIFIC):
        if len(vsa) < 6 or int.from_bytes(vsa[:4], "big") != MICROSOFT:
            continue
        if vsa[4] != vendor_type or vsa[5] != len(vsa) - 4:
            continue
        salt, cipher = vsa[6:8], vsa[8:]
        if len(salt) != 2 or not salt[0] & 0x80 or not cipher or len(cipher) % 16:
            raise InvalidRadiusPacket("MS-MPPE key attribute is malformed")
        plain = bytearray()
        previous = request_authenticator + salt
        for i in range(0, len(cipher), 16):
            block = cipher[i:i + 16]
            pad = _md5(secret, previous)
            plain += bytes(a ^ b for a, b in zip(block, pad, strict=True))
            previous = block
        if plain[0] == 0 or plain[0] > len(plain) - 1:
            raise InvalidRadiusPacket("MS-MPPE key length is wrong (bad secret?)")
        return bytes(plain[1:1 + plain[0]])
    return None


def framed_ip(packet: RadiusPacket) -> str | None:
    """RFC 2865 §5.8: 255.255.255.255 (the NAS chooses) and 255.255.255.254 (the user
    chooses) name no address."""
    raw = packet.first(Attr.FRAMED_IP_ADDRESS)
    if raw is None:
        return None
    if len(raw) != 4:
        raise InvalidRadiusPacket("Framed-IP-Address is not 4 bytes")
    addr = ipaddress.IPv4Address(raw)
    return None if str(addr) in ("255.255.255.255", "255.255.255.254") else str(addr)


def encrypt_mppe_key(key: bytes, salt: bytes, request_authenticator: bytes,
                     secret: bytes) -> bytes:
    """The server's side of `mppe_key` (the tests build answers with it)."""
    plain = bytes([len(key)]) + key
    plain += bytes(-len(plain) % 16)
    out = bytearray()
    previous = request_authenticator + salt
    for i in range(0, len(plain), 16):
        block = bytes(a ^ b for a, b in zip(plain[i:i + 16], _md5(secret, previous),
                                             strict=True))
        out += block
        previous = block
    return salt + bytes(out)
