"""One step of keyd, as the engine hands it to the shell: what the core did, what must be
written before which datagrams may leave; and the IKE header fields the shell reads to route a
message before the core sees it (RFC 7296 §3.1)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from .ike import events as ike
from .persist import Changes
from .udp import Address

IKE_SA_INIT = 34
IKE_AUTH = 35
INFORMATIONAL = 37
EXCHANGES = {34: "IKE_SA_INIT", 35: "IKE_AUTH", 36: "CREATE_CHILD_SA", 37: "INFORMATIONAL"}


@dataclass(frozen=True, slots=True)
class Outbound:
    """A datagram to send: bare IKE message, our port (500 or 4500), the client."""

    data: bytes
    local_port: int
    remote: Address


_IKE_HEADER = struct.Struct("!QQBBBB")


IkeHeader = tuple[str, int, int, int]   # what ike_sa_id_of reads


def ike_sa_id_of(message: bytes, offset: int = 0) -> IkeHeader:
    """(IKE SA id, responder SPI, exchange type, flags) from an IKE header (RFC 7296 §3.1)
    at `offset` (4 behind the non-ESP marker)."""
    spi_i, spi_r, _next, _ver, exchange, flags = _IKE_HEADER.unpack_from(message, offset)
    return f"{spi_i:016x}{spi_r:016x}", spi_r, exchange, flags


@dataclass(slots=True)
class Step:
    """What one step of the core did: the changes to make durable, the datagrams that may
    leave only once they are, and the IKE SAs whose state it changed."""

    changes: Changes = field(default_factory=Changes)
    touched: set[str] = field(default_factory=set)   # IKE SAs whose state this step changed
    created: set[str] = field(default_factory=set)   # IKE SAs first seen in this step
    states: dict[str, dict[str, Any]] = field(default_factory=dict)  # exported, by IKE SA
    updated: dict[str, None] = field(default_factory=dict)   # IKE SAs to write, in order
    out: list[Outbound] = field(default_factory=list)
    exchange: str = "other"
    liveness_only: bool = False
    # a new half-open IKE SA (IKE_SA_INIT): its answer leaves at once, its write follows
    half_open: bool = False
    # an IKE_AUTH round that completes nothing (an EAP round): its answer leaves at once, its
    # write right after; the IKE SA's next message waits for that write (docs/eap.md)
    answer_first: bool = False
    # the message names an IKE SA held nowhere (yet): the core has not seen it
    waiting_for: str | None = None
    started: float = 0.0
    # EAP responses to relay to RADIUS (the shell sends them, then calls radius_answer)
    radius: list[ike.RadiusRequested] = field(default_factory=list)

    @property
    def needs_write(self) -> bool:
        return not self.changes.empty()

    def holds(self) -> set[str]:
        """The IKE SAs no other step may change until this one is settled."""
        return self.touched | set(self.changes.ike_puts) | set(self.changes.deleted_ike)

    @property
    def answered_before_write(self) -> bool:
        """Its answer leaves before its write: a half-open IKE SA's or an EAP round's."""
        return self.half_open or self.answer_first

    def release_now(self) -> list[Outbound]:
        """The datagrams that may leave before the write: all of them when there is nothing
        to write, the IKE_SA_INIT answer of a half-open IKE SA and the answer of an EAP
        round, else none."""
        return self.out if not self.needs_write or self.answered_before_write else []
