"""IKEv2 payloads (RFC 7296 §3.3 to §3.16) as frozen dataclasses.

Numbers from the wire stay plain ints (an unknown transform or notify type is not a parse
error); the enums in `constants` name the ones the core acts on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, TypeVar

from .constants import PayloadType


@dataclass(frozen=True, slots=True)
class Transform:
    """One transform of a proposal (§3.3.2); `key_length` is the Key Length attribute in bits."""

    type: int
    id: int
    key_length: int | None = None


@dataclass(frozen=True, slots=True)
class Proposal:
    """A proposal substructure (§3.3.1); `spi` is 8 bytes for IKE rekeys, 4 for ESP, else empty."""

    num: int
    protocol: int
    spi: bytes
    transforms: tuple[Transform, ...]


@dataclass(frozen=True, slots=True)
class Payload:
    """Marker base class of every payload."""

    payload_type: ClassVar[int] = 0


@dataclass(frozen=True, slots=True)
class SaPayload(Payload):
    payload_type: ClassVar[int] = PayloadType.SA
    proposals: tuple[Proposal, ...]


@dataclass(frozen=True, slots=True)
class KePayload(Payload):
    payload_type: ClassVar[int] = PayloadType.KE
    group: int
    data: bytes


@dataclass(frozen=True, slots=True)
class NoncePayload(Payload):
    payload_type: ClassVar[int] = PayloadType.NONCE
    data: bytes


@dataclass(frozen=True, slots=True)
class IdiPayload(Payload):
    payload_type: ClassVar[int] = PayloadType.IDI
    id_type: int
    data: bytes


@dataclass(frozen=True, slots=True)
class IdrPayload(Payload):
    payload_type: ClassVar[int] = PayloadType.IDR
    id_type: int
    data: bytes


@dataclass(frozen=True, slots=True)
class CertPayload(Payload):
    payload_type: ClassVar[int] = PayloadType.CERT
    encoding: int
    data: bytes


@dataclass(frozen=True, slots=True)
class CertReqPayload(Payload):
    payload_type: ClassVar[int] = PayloadType.CERTREQ
    encoding: int
    data: bytes  # concatenated SHA-1 hashes of trusted CA public keys (§3.7)


@dataclass(frozen=True, slots=True)
class AuthPayload(Payload):
    payload_type: ClassVar[int] = PayloadType.AUTH
    method: int
    data: bytes


@dataclass(frozen=True, slots=True)
class NotifyPayload(Payload):
    payload_type: ClassVar[int] = PayloadType.NOTIFY
    type: int
    data: bytes = b""
    protocol: int = 0
    spi: bytes = b""


@dataclass(frozen=True, slots=True)
class DeletePayload(Payload):
    payload_type: ClassVar[int] = PayloadType.DELETE
    protocol: int
    spis: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class VendorPayload(Payload):
    payload_type: ClassVar[int] = PayloadType.VENDOR
    data: bytes


@dataclass(frozen=True, slots=True)
class EapPayload(Payload):
    """§3.16: one EAP packet (RFC 3748), carried as is."""

    payload_type: ClassVar[int] = PayloadType.EAP
    data: bytes


@dataclass(frozen=True, slots=True)
class TrafficSelector:
    """§3.13.1: an address range, an IP protocol (0 = any) and a port range."""

    ts_type: int
    ip_protocol: int
    start_port: int
    end_port: int
    start_addr: bytes
    end_addr: bytes


@dataclass(frozen=True, slots=True)
class TsiPayload(Payload):
    payload_type: ClassVar[int] = PayloadType.TSI
    selectors: tuple[TrafficSelector, ...]


@dataclass(frozen=True, slots=True)
class TsrPayload(Payload):
    payload_type: ClassVar[int] = PayloadType.TSR
    selectors: tuple[TrafficSelector, ...]


@dataclass(frozen=True, slots=True)
class CpPayload(Payload):
    """§3.15: `attributes` are (attribute type, value) pairs in wire order."""

    payload_type: ClassVar[int] = PayloadType.CP
    cfg_type: int
    attributes: tuple[tuple[int, bytes], ...]


@dataclass(frozen=True, slots=True)
class SkPayload(Payload):
    """The Encrypted and Authenticated payload (§3.14), still sealed.

    `first_inner` is the type of the first payload inside; `data` is IV | ciphertext | ICV.
    """

    payload_type: ClassVar[int] = PayloadType.SK
    first_inner: int
    data: bytes


@dataclass(frozen=True, slots=True)
class SkfPayload(SkPayload):
    """The Encrypted Fragment payload SKF (RFC 7383 §2.5), still sealed: one fragment of an
    SK message. `first_inner` is non-zero in fragment 1 only; see keyd/ike/fragments.py."""

    payload_type: ClassVar[int] = PayloadType.SKF
    fragment_number: int
    total_fragments: int


@dataclass(frozen=True, slots=True)
class UnknownPayload(Payload):
    """A payload type the core does not interpret (non-critical: ignored per §2.5)."""

    type: int
    data: bytes


P = TypeVar("P", bound=Payload)


def find(payloads: Sequence[Payload], cls: type[P]) -> P | None:
    """The first payload of class `cls`, or None."""
    return next((p for p in payloads if isinstance(p, cls)), None)


def notifies(payloads: Sequence[Payload], n_type: int) -> list[NotifyPayload]:
    """Every Notify payload of type `n_type`, in order."""
    return [p for p in payloads if isinstance(p, NotifyPayload) and p.type == n_type]
