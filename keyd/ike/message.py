"""IKEv2 message codec: header (RFC 7296 §3.1) and the payload chain (§3.2 to §3.16).

`pull_message(data)` parses a whole datagram (the SK payload stays sealed: see `protect`),
`push_message(header, payloads)` serialises one. Every length-prefixed block must be
consumed exactly; anything else raises IkeProtocolError(INVALID_SYNTAX).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .buffer import Buffer
from .constants import IKE_VERSION, Flag, Notify, PayloadType
from .errors import IkeProtocolError
from .payloads import (
    AuthPayload,
    CertPayload,
    CertReqPayload,
    CpPayload,
    DeletePayload,
    EapPayload,
    IdiPayload,
    IdrPayload,
    KePayload,
    NoncePayload,
    NotifyPayload,
    Payload,
    Proposal,
    SaPayload,
    SkfPayload,
    SkPayload,
    TrafficSelector,
    Transform,
    TsiPayload,
    TsrPayload,
    UnknownPayload,
    VendorPayload,
)

HEADER_LENGTH = 28
GENERIC_HEADER_LENGTH = 4
MAX_MESSAGE_LENGTH = 65535
KEY_LENGTH_ATTRIBUTE = 14  # §3.3.5
_TS_ADDR_LEN = {7: 4, 8: 16}
_HEADER = struct.Struct("!QQBBBBII")     # §3.1
_GENERIC = struct.Struct("!BBH")         # §3.2: next payload, critical, length


@dataclass(frozen=True, slots=True)
class Header:
    """The fixed IKE header (§3.1). `length` is the whole message; 0 when pushing (computed)."""

    spi_i: int
    spi_r: int
    next_payload: int
    exchange: int
    flags: int
    message_id: int
    version: int = IKE_VERSION
    length: int = 0

    @property
    def is_response(self) -> bool:
        return bool(self.flags & Flag.RESPONSE)

    @property
    def from_initiator(self) -> bool:
        return bool(self.flags & Flag.INITIATOR)


@dataclass(frozen=True, slots=True)
class Message:
    """A parsed datagram: header, payloads in order, and the raw bytes (AUTH and SK need them)."""

    header: Header
    payloads: tuple[Payload, ...]
    raw: bytes

    def find(self, cls: type[Payload]) -> Payload | None:
        for p in self.payloads:
            if isinstance(p, cls):
                return p
        return None


def _syntax(msg: str) -> IkeProtocolError:
    return IkeProtocolError(msg, Notify.INVALID_SYNTAX)


# ---- header -----------------------------------------------------------------------------


def pull_header(buf: Buffer) -> Header:
    spi_i, spi_r, next_payload, version, exchange, flags, message_id, length = \
        buf.pull_struct(_HEADER)
    if version >> 4 != 2:
        raise IkeProtocolError(f"IKE major version {version >> 4}", Notify.INVALID_MAJOR_VERSION)
    return Header(spi_i, spi_r, next_payload, exchange, flags, message_id, version, length)


def push_header(buf: Buffer, h: Header, next_payload: int | None = None,
                length: int | None = None) -> None:
    """The header; `next_payload` and `length`, when given, instead of the header's own."""
    buf.push_struct(_HEADER, h.spi_i, h.spi_r,
                    h.next_payload if next_payload is None else next_payload, h.version,
                    h.exchange, h.flags, h.message_id, h.length if length is None else length)


# ---- SA ---------------------------------------------------------------------------------


def pull_transform(buf: Buffer) -> Transform:
    t_type = buf.pull_uint8()
    buf.pull_uint8()
    t_id = buf.pull_uint16()
    key_length = None
    while not buf.eof():
        attr = buf.pull_uint16()
        if attr & 0x8000:  # TV format
            value = buf.pull_uint16()
            if attr & 0x7FFF == KEY_LENGTH_ATTRIBUTE:
                key_length = value
        else:  # TLV: no TLV attribute is defined for IKEv2 transforms; skip it
            buf.pull_bytes(buf.pull_uint16())
    return Transform(t_type, t_id, key_length)


def push_transform(buf: Buffer, t: Transform, last: bool) -> None:
    body = Buffer()
    body.push_uint8(t.type)
    body.push_uint8(0)
    body.push_uint16(t.id)
    if t.key_length is not None:
        body.push_uint16(0x8000 | KEY_LENGTH_ATTRIBUTE)
        body.push_uint16(t.key_length)
    buf.push_uint8(0 if last else 3)
    buf.push_uint8(0)
    buf.push_uint16(len(body) + 4)
    buf.push_bytes(body.data())


def pull_proposal(buf: Buffer) -> Proposal:
    num = buf.pull_uint8()
    protocol = buf.pull_uint8()
    spi_size = buf.pull_uint8()
    n_transforms = buf.pull_uint8()
    spi = buf.pull_bytes(spi_size)
    transforms = []
    for i in range(n_transforms):
        last = buf.pull_uint8()
        buf.pull_uint8()
        length = buf.pull_uint16()
        if length < 8:
            raise _syntax("transform length")
        transforms.append(pull_transform(buf.sub(length - 4)))
        if (last == 0) != (i == n_transforms - 1) or last not in (0, 3):
            raise _syntax("transform chain")
    if not buf.eof():
        raise _syntax("proposal has trailing bytes")
    return Proposal(num, protocol, spi, tuple(transforms))


def push_proposal(buf: Buffer, p: Proposal, last: bool) -> None:
    body = Buffer()
    body.push_uint8(p.num)
    body.push_uint8(p.protocol)
    body.push_uint8(len(p.spi))
    body.push_uint8(len(p.transforms))
    body.push_bytes(p.spi)
    for i, t in enumerate(p.transforms):
        push_transform(body, t, i == len(p.transforms) - 1)
    buf.push_uint8(0 if last else 2)
    buf.push_uint8(0)
    buf.push_uint16(len(body) + 4)
    buf.push_bytes(body.data())


def pull_sa(buf: Buffer) -> SaPayload:
    proposals = []
    last = 2
    while last == 2:
        if buf.eof():
            raise _syntax("SA payload without proposals")
        last = buf.pull_uint8()
        buf.pull_uint8()
        length = buf.pull_uint16()
        if last not in (0, 2) or length < 8:
            raise _syntax("proposal header")
        proposals.append(pull_proposal(buf.sub(length - 4)))
    if not buf.eof():
        raise _syntax("SA payload has trailing bytes")
    return SaPayload(tuple(proposals))


# ---- traffic selectors and configuration ------------------------------------------------


def pull_selectors(buf: Buffer) -> tuple[TrafficSelector, ...]:
    count = buf.pull_uint8()
    buf.pull_bytes(3)
    out = []
    for _ in range(count):
        ts_type = buf.pull_uint8()
        proto = buf.pull_uint8()
        length = buf.pull_uint16()
        if length < 4:
            raise _syntax("traffic selector length")
        body = buf.sub(length - 4)
        addr_len = _TS_ADDR_LEN.get(ts_type)
        if addr_len is None:
            continue  # unknown selector type: skipped (it cannot be narrowed to anything)
        start_port, end_port = body.pull_uint16(), body.pull_uint16()
        start, end = body.pull_bytes(addr_len), body.pull_bytes(addr_len)
        if not body.eof():
            raise _syntax("traffic selector has trailing bytes")
        out.append(TrafficSelector(ts_type, proto, start_port, end_port, start, end))
    if not buf.eof():
        raise _syntax("TS payload has trailing bytes")
    return tuple(out)


def push_selectors(buf: Buffer, selectors: Sequence[TrafficSelector]) -> None:
    buf.push_uint8(len(selectors))
    buf.push_bytes(b"\0\0\0")
    for ts in selectors:
        buf.push_uint8(ts.ts_type)
        buf.push_uint8(ts.ip_protocol)
        buf.push_uint16(8 + len(ts.start_addr) + len(ts.end_addr))
        buf.push_uint16(ts.start_port)
        buf.push_uint16(ts.end_port)
        buf.push_bytes(ts.start_addr)
        buf.push_bytes(ts.end_addr)


def pull_cp(buf: Buffer) -> CpPayload:
    cfg_type = buf.pull_uint8()
    buf.pull_bytes(3)
    attrs = []
    while not buf.eof():
        attr_type = buf.pull_uint16() & 0x7FFF
        attrs.append((attr_type, buf.pull_bytes(buf.pull_uint16())))
    return CpPayload(cfg_type, tuple(attrs))


# ---- payload chain ----------------------------------------------------------------------


def _pull_ke(buf: Buffer) -> Payload:
    group = buf.pull_uint16()
    buf.pull_uint16()
    return KePayload(group, buf.pull_rest())


def _pull_nonce(buf: Buffer) -> Payload:
    data = buf.pull_rest()
    if not 16 <= len(data) <= 256:  # §3.9
        raise _syntax("nonce length")
    return NoncePayload(data)


def _pull_id(cls: type[IdiPayload] | type[IdrPayload], buf: Buffer) -> Payload:
    id_type = buf.pull_uint8()
    buf.pull_bytes(3)
    return cls(id_type, buf.pull_rest())


def _pull_auth(buf: Buffer) -> Payload:
    method = buf.pull_uint8()
    buf.pull_bytes(3)
    return AuthPayload(method, buf.pull_rest())


def _pull_notify(buf: Buffer) -> Payload:
    protocol = buf.pull_uint8()
    spi_size = buf.pull_uint8()
    n_type = buf.pull_uint16()
    spi = buf.pull_bytes(spi_size)
    return NotifyPayload(n_type, buf.pull_rest(), protocol, spi)


def _pull_delete(buf: Buffer) -> Payload:
    protocol = buf.pull_uint8()
    spi_size = buf.pull_uint8()
    count = buf.pull_uint16()
    spis = tuple(buf.pull_bytes(spi_size) for _ in range(count))
    if not buf.eof():
        raise _syntax("delete payload has trailing bytes")
    return DeletePayload(protocol, spis)


# one parser per payload type (a table: the codec runs for every payload of every message)
_PULL: dict[int, Callable[[Buffer], Payload]] = {
    PayloadType.SA: pull_sa,
    PayloadType.KE: _pull_ke,
    PayloadType.NONCE: _pull_nonce,
    PayloadType.IDI: lambda buf: _pull_id(IdiPayload, buf),
    PayloadType.IDR: lambda buf: _pull_id(IdrPayload, buf),
    PayloadType.CERT: lambda buf: CertPayload(buf.pull_uint8(), buf.pull_rest()),
    PayloadType.CERTREQ: lambda buf: CertReqPayload(buf.pull_uint8(), buf.pull_rest()),
    PayloadType.AUTH: _pull_auth,
    PayloadType.NOTIFY: _pull_notify,
    PayloadType.DELETE: _pull_delete,
    PayloadType.VENDOR: lambda buf: VendorPayload(buf.pull_rest()),
    PayloadType.TSI: lambda buf: TsiPayload(pull_selectors(buf)),
    PayloadType.TSR: lambda buf: TsrPayload(pull_selectors(buf)),
    PayloadType.CP: pull_cp,
    PayloadType.EAP: lambda buf: EapPayload(buf.pull_rest()),
}


def pull_payload_body(p_type: int, buf: Buffer) -> Payload:
    """Parse one payload body of type `p_type` (generic header already consumed)."""
    pull = _PULL.get(p_type)
    if pull is None:
        return UnknownPayload(p_type, buf.pull_rest())
    return pull(buf)


def pull_payloads(buf: Buffer, first: int) -> tuple[list[Payload], SkPayload | None]:
    """Parse a payload chain. An SK payload ends the chain (it must be last, §3.14)."""
    payloads: list[Payload] = []
    p_type = first
    while p_type != PayloadType.NONE:
        next_type, flags, length = buf.pull_struct(_GENERIC)
        critical = flags & 0x80
        if length < GENERIC_HEADER_LENGTH:
            raise _syntax("payload length")
        body = buf.sub(length - GENERIC_HEADER_LENGTH)
        if p_type == PayloadType.SK:
            if not buf.eof():
                raise _syntax("SK payload is not the last payload")
            return payloads, SkPayload(next_type, body.pull_rest())
        if p_type == PayloadType.SKF:  # RFC 7383 §2.5: last too; reassembled in fragments.py
            if not buf.eof():
                raise _syntax("SKF payload is not the last payload")
            number, total = body.pull_uint16(), body.pull_uint16()
            return payloads, SkfPayload(next_type, body.pull_rest(), number, total)
        payload = pull_payload_body(p_type, body)
        if isinstance(payload, UnknownPayload):
            if critical:
                raise IkeProtocolError(  # §2.5: the answer names the payload type
                    f"unsupported critical payload {p_type}",
                    Notify.UNSUPPORTED_CRITICAL_PAYLOAD, bytes([p_type]),
                )
        elif not body.eof():
            raise _syntax(f"payload {p_type} has trailing bytes")
        payloads.append(payload)
        p_type = next_type
    if not buf.eof():
        raise _syntax("bytes after the last payload")
    return payloads, None


def _push_sa(buf: Buffer, p: SaPayload) -> None:
    for i, prop in enumerate(p.proposals):
        push_proposal(buf, prop, i == len(p.proposals) - 1)


def _push_ke(buf: Buffer, p: KePayload) -> None:
    buf.push_uint16(p.group)
    buf.push_uint16(0)
    buf.push_bytes(p.data)


def _push_id(buf: Buffer, p: IdiPayload | IdrPayload) -> None:
    buf.push_uint8(p.id_type)
    buf.push_bytes(b"\0\0\0")
    buf.push_bytes(p.data)


def _push_cert(buf: Buffer, p: CertPayload | CertReqPayload) -> None:
    buf.push_uint8(p.encoding)
    buf.push_bytes(p.data)


def _push_auth(buf: Buffer, p: AuthPayload) -> None:
    buf.push_uint8(p.method)
    buf.push_bytes(b"\0\0\0")
    buf.push_bytes(p.data)


def _push_notify(buf: Buffer, p: NotifyPayload) -> None:
    buf.push_uint8(p.protocol)
    buf.push_uint8(len(p.spi))
    buf.push_uint16(p.type)
    buf.push_bytes(p.spi)
    buf.push_bytes(p.data)


def _push_delete(buf: Buffer, p: DeletePayload) -> None:
    buf.push_uint8(p.protocol)
    buf.push_uint8(len(p.spis[0]) if p.spis else 0)
    buf.push_uint16(len(p.spis))
    for spi in p.spis:
        buf.push_bytes(spi)


def _push_ts(buf: Buffer, p: TsiPayload | TsrPayload) -> None:
    push_selectors(buf, p.selectors)


def _push_cp(buf: Buffer, p: CpPayload) -> None:
    buf.push_uint8(p.cfg_type)
    buf.push_bytes(b"\0\0\0")
    for attr_type, value in p.attributes:
        buf.push_uint16(attr_type)
        buf.push_uint16(len(value))
        buf.push_bytes(value)


def _push_data(buf: Buffer,
               p: NoncePayload | VendorPayload | UnknownPayload | SkPayload | EapPayload) -> None:
    buf.push_bytes(p.data)


# one serialiser per payload class (a table, as for parsing)
_PUSH: dict[type, Callable[[Buffer, Any], None]] = {
    SaPayload: _push_sa, KePayload: _push_ke, IdiPayload: _push_id, IdrPayload: _push_id,
    CertPayload: _push_cert, CertReqPayload: _push_cert, AuthPayload: _push_auth,
    NotifyPayload: _push_notify, DeletePayload: _push_delete, TsiPayload: _push_ts,
    TsrPayload: _push_ts, CpPayload: _push_cp, NoncePayload: _push_data,
    VendorPayload: _push_data, UnknownPayload: _push_data, SkPayload: _push_data,
    EapPayload: _push_data,
}


def push_payload_body(buf: Buffer, p: Payload) -> None:
    try:
        push = _PUSH[type(p)]
    except KeyError:  # pragma: no cover - every payload class is in the table
        raise TypeError(type(p).__name__) from None
    push(buf, p)


def payload_type_of(p: Payload) -> int:
    return p.type if isinstance(p, UnknownPayload) else p.payload_type


def push_payloads(buf: Buffer, payloads: Sequence[Payload], last_next: int = 0) -> None:
    """Serialise a chain; `last_next` is the next-payload field of the last one (SK: inner)."""
    for i, p in enumerate(payloads):
        body = Buffer()
        push_payload_body(body, p)
        if isinstance(p, SkPayload):
            next_type = p.first_inner
        elif i + 1 < len(payloads):
            next_type = payload_type_of(payloads[i + 1])
        else:
            next_type = last_next
        buf.push_struct(_GENERIC, next_type, 0, len(body) + GENERIC_HEADER_LENGTH)
        buf.push_bytes(body.data())


def pull_message(data: bytes) -> tuple[Message, SkPayload | None]:
    """Parse a datagram into a Message; a sealed SK payload comes back separately."""
    if len(data) > MAX_MESSAGE_LENGTH:
        raise _syntax("message too long")
    buf = Buffer(data)
    header = pull_header(buf)
    if header.length != len(data):
        raise _syntax("header length does not match the datagram")
    payloads, sk = pull_payloads(buf, header.next_payload)
    return Message(header, tuple(payloads), data), sk


def push_message(header: Header, payloads: Sequence[Payload]) -> bytes:
    """Serialise header and payloads; the header's next-payload and length are computed."""
    body = Buffer()
    push_payloads(body, payloads)
    first = payload_type_of(payloads[0]) if payloads else 0
    out = Buffer()
    push_header(out, header, first, HEADER_LENGTH + len(body))
    out.push_bytes(body.data())
    return out.data()
