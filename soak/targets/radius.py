"""The RADIUS codec of the EAP relay (keyd/eap/radius.py, RFC 2865, RFC 3579, RFC 2548): the
packet and its attributes, the Response Authenticator and Message-Authenticator checks, the
MS-MPPE keys, Framed-IP-Address and the EAP-Message inside.

An input is `mode byte | rest`. Mode 0: `rest` is a datagram, parsed and its attributes read
as the relay reads them. Mode 1: `rest` is checked as the answer to a known request (shared
secret and Request Authenticator known). Mode 2: `rest` is a run of attributes (type, length,
value as on the wire, possibly broken), wrapped here into an answer signed with the known
secret, so both checks pass and the fuzzer reaches the MPPE keys, the address and EAP.
"""

from __future__ import annotations

import struct

from soak import decoders as d

TITLE = "RADIUS answer: attributes, authenticators, MS-MPPE keys, EAP-Message"
TYPED: tuple[type[BaseException], ...] = (d.InvalidRadiusPacket, d.RemoteEapError)

SECRET = b"soak radius secret"
REQUEST_AUTH = bytes(range(16))
IDENTIFIER = 42
_ACCEPT, _CHALLENGE = 2, 11
_MS = (311).to_bytes(4)


def _read(packet: object) -> None:
    """What the relay takes from a verified answer."""
    for vendor_type in (16, 17):  # MS-MPPE-Send-Key, MS-MPPE-Recv-Key
        d.mppe_key(packet, vendor_type, REQUEST_AUTH, SECRET)  # type: ignore[arg-type]
    d.framed_ip(packet)  # type: ignore[arg-type]
    eap = packet.eap_message()  # type: ignore[attr-defined]
    if eap is not None:
        d.pull_eap(eap)


def _attributes(raw: bytes) -> list[tuple[int, bytes]]:
    """Split `raw` as TLVs the way the peer wrote them; a length past the end takes the rest."""
    out, pos = [], 0
    while pos + 2 <= len(raw):
        n = max(raw[pos + 1], 2)
        out.append((raw[pos], raw[pos + 2:pos + n][:253]))
        pos += n
    return out


def _tlv(attributes: list[tuple[int, bytes]]) -> bytes:
    return b"".join(bytes((t, len(v) + 2)) + v for t, v in attributes)


def seeds() -> list[bytes]:
    send = d.encrypt_mppe_key(bytes(32), b"\x80\x01", REQUEST_AUTH, SECRET)
    recv = d.encrypt_mppe_key(bytes(range(32)), b"\x80\x02", REQUEST_AUTH, SECRET)
    attrs = [(26, _MS + bytes((16, len(send) + 2)) + send),
             (26, _MS + bytes((17, len(recv) + 2)) + recv),
             (8, bytes((10, 99, 0, 1))), (79, b"\x03\x05\x00\x04"), (25, b"class")]
    out = []
    for code in (_ACCEPT, 3, _CHALLENGE):
        answer = d.push_response(code, IDENTIFIER, REQUEST_AUTH, attrs, SECRET)
        out += [b"\0" + answer, b"\1" + answer]
    out.append(b"\2" + _tlv(attrs))
    out.append(b"\2" + _tlv([(79, b"\x01\x06\x00\x06\x1a\x01"), (24, b"state")]))
    return out


def one_input(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0] % 3, data[1:]
    if mode == 0:
        _read(d.pull_packet(rest))
    elif mode == 1:
        _read(d.verify_response(rest, IDENTIFIER, REQUEST_AUTH, SECRET))
    else:
        code = _ACCEPT if len(rest) % 2 else _CHALLENGE
        try:
            answer = d.push_response(code, IDENTIFIER, REQUEST_AUTH, _attributes(rest), SECRET)
        except (ValueError, OverflowError, struct.error):
            return  # more attributes than one packet holds: not a datagram a server can send
        _read(d.verify_response(answer, IDENTIFIER, REQUEST_AUTH, SECRET))
