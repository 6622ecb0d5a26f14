"""What the EAP authenticator asks its caller to do next (one action per input)."""

from __future__ import annotations

from dataclasses import dataclass, field


class EapAction:
    """Marker base class of the authenticator's actions."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class SendToPeer(EapAction):
    """Carry `packet` (an EAP Request) to the peer and feed its response to `receive`."""

    packet: bytes


@dataclass(frozen=True, slots=True)
class SendToRadius(EapAction):
    """Send `datagram` (an Access-Request) to RADIUS server number `server` of the relay's
    list (resending the same bytes on retransmission): feed the answer to `radius_reply`, or
    call `radius_timeout` once the caller gave up on that server."""

    datagram: bytes = field(repr=False)
    server: int
    identifier: int  # the RADIUS Identifier, to match the reply to the request


@dataclass(frozen=True, slots=True)
class EapSucceeded(EapAction):
    """The peer authenticated as `identity`: carry `packet` (EAP-Success) to it; `msk` keys
    the AUTH payloads that follow (RFC 7296 §2.16)."""

    packet: bytes
    identity: str
    msk: bytes = field(repr=False)
    virtual_ip: str | None = None  # Framed-IP-Address from RADIUS


@dataclass(frozen=True, slots=True)
class EapFailed(EapAction):
    """The conversation failed: carry `packet` (EAP-Failure) to the peer. `reason` is the
    counter name ("unknown user", "bad password", "radius reject", "radius timeout",
    "method refused", "bad message")."""

    packet: bytes
    identity: str | None
    reason: str
