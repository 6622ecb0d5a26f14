"""The SAs a node holds, by inbound SPI, and the demultiplexing of UDP/4500 payloads.

`SaTable.receive(payload, now)` is the inbound entry point of the core: it classifies a UDP
payload (RFC 3948), finds the SA by SPI and opens the packet; the result is one `EspEvent`.
Every drop is counted here by reason, whether or not an SA was found.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Generic, TypeVar

from cluster.esp.errors import DropReason, EspProtocolError
from cluster.esp.packet import Datagram, classify_udp, pull_ike_from_udp
from cluster.esp.sa import ChildSa


class EspEvent:
    """Marker base class of what `SaTable.receive` reports."""

    __slots__ = ()


@dataclass(slots=True)  # not frozen: one is built per packet, and frozen costs 2.5x
class Decrypted(EspEvent):
    sa: ChildSa  # the SA that authenticated the packet
    inner: bytes  # the inner IP packet, for the TUN device


@dataclass(frozen=True, slots=True)
class Dropped(EspEvent):
    reason: DropReason
    spi: int | None  # the packet's SPI when it had one


@dataclass(frozen=True, slots=True)
class IkeMessage(EspEvent):
    message: bytes  # an IKE message that arrived behind the non-ESP marker (RFC 3948 §2.2)


@dataclass(frozen=True, slots=True)
class Keepalive(EspEvent):
    """A NAT keepalive (RFC 3948 §2.3): nothing to do."""


_KEEPALIVE = Keepalive()

S = TypeVar("S", bound=ChildSa)


class SaTable(Generic[S]):
    """Child SAs by inbound SPI; counts drops by reason across all of them."""

    def __init__(self) -> None:
        self.by_spi: dict[int, S] = {}
        #: the same, keyed by the SPI as sent (4 bytes): what a hot path looks up
        self.by_wire_spi: dict[bytes, S] = {}
        self.drops: Counter[DropReason] = Counter()

    def __len__(self) -> int:
        return len(self.by_spi)

    def install(self, sa: S) -> S | None:
        """Hold `sa`; returns the SA it replaces, if any."""
        old = self.by_spi.get(sa.spi_in)
        self.by_spi[sa.spi_in] = sa
        self.by_wire_spi[sa.spi_in.to_bytes(4)] = sa
        return old

    def remove(self, spi_in: int) -> S | None:
        self.by_wire_spi.pop(spi_in.to_bytes(4), None)
        return self.by_spi.pop(spi_in, None)

    def get(self, spi_in: int) -> S | None:
        return self.by_spi.get(spi_in)

    def receive(self, payload: bytes, now: float) -> EspEvent:
        """One UDP/4500 payload in, one event out (never raises for peer input)."""
        sa = self.by_wire_spi.get(payload[:4])
        if sa is not None:  # ESP for an SA we hold: the hot path (an SPI is never zero)
            try:
                return Decrypted(sa, sa.open(payload, now))
            except EspProtocolError as e:
                return self.dropped(sa, e.reason)
        try:
            kind = classify_udp(payload)
        except EspProtocolError as e:
            self.drops[e.reason] += 1
            return Dropped(e.reason, None)
        if kind is Datagram.ESP:
            return self.receive_esp(payload, now)
        if kind is Datagram.IKE:
            return IkeMessage(pull_ike_from_udp(payload))
        return _KEEPALIVE

    def receive_esp(self, esp: bytes, now: float) -> EspEvent:
        """A bare ESP packet (IP protocol 50, or a classified UDP payload) in, one event out."""
        spi = int.from_bytes(esp[:4])
        sa = self.by_spi.get(spi)
        if sa is None:
            reason = DropReason.UNKNOWN_SPI if len(esp) >= 8 else DropReason.MALFORMED
            self.drops[reason] += 1
            return Dropped(reason, spi)
        try:
            return Decrypted(sa, sa.open(esp, now))
        except EspProtocolError as e:
            return self.dropped(sa, e.reason)

    def dropped(self, sa: S, reason: DropReason) -> Dropped:
        """Count a packet `sa` refused (its counter and the table's)."""
        sa.drops[reason] += 1
        self.drops[reason] += 1
        return Dropped(reason, sa.spi_in)
