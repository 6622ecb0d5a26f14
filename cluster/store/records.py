"""Typed records of the keyspace and their versioned JSON codecs.

Every value is a JSON object `{"v": <version>, ...fields}`. Secret fields (the IKE SA state,
the Child SA keys) never appear in clear: they travel together in one field `"sealed"`,
AES-GCM under the cluster data key with the etcd key as associated data (seal.py).
`decode_record` checks the version and every field's type and raises `MalformedRecord` for
anything else; watchers log, count and skip such values.

Field names are a contract the other components code against.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar, Union

from cluster.policy.rules import MODES, PolicyError, parse_rules

from .keyspace import BadKey, check_name, parse_ike_sa_id
from .seal import DataKey, PublicView, WrongDataKey

VERSION = 1

# Bounds of numbers a record may carry. JSON numbers have no limit, and a value no writer
# could produce (a capacity of 10**400, a time of NaN) must be a malformed record, never a
# crash in whoever reads it (float() overflows, JSON output of NaN is not JSON).
MAX_CAPACITY = (1 << 32) - 1          # planner weight
MAX_COUNTER = (1 << 64) - 1           # ESP sequence numbers (64-bit ESN), traffic counts
MAX_EPOCH = (1 << 63) - 1             # assignment epoch (fencing token)
MAX_BITMAP_BITS = 4096                # the largest anti-replay window (cluster.esp.MAX_WINDOW)


class MalformedRecord(ValueError):
    """A stored value is not a valid record of the expected kind and version."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"malformed record at {key}: {reason}")
        self.key = key
        self.reason = reason


class UnknownVersion(MalformedRecord):
    """A record written by a newer (or unknown) codec version."""


class Record:
    """Marker base of every stored record. KIND is the keyspace kind (`sa`, `nodes`, ...)."""

    KIND: ClassVar[str] = ""
    SECRET_FIELDS: ClassVar[tuple[str, ...]] = ()

    def validate(self) -> None:
        """Semantic checks beyond field types; raise ValueError."""


def _redacted(self: Any) -> str:
    parts = []
    for f in dataclasses.fields(self):
        value = getattr(self, f.name)
        if f.name in self.SECRET_FIELDS:
            parts.append(f"{f.name}=<redacted {len(value)} bytes>")
        else:
            parts.append(f"{f.name}={value!r}")
    return f"{type(self).__name__}({', '.join(parts)})"


# Every record write and read validates its addresses, and the same few addresses and
# networks come back again and again: the verdicts on strings are cached.
@functools.lru_cache(maxsize=65536)
def _cidr_ok(v: object) -> bool:
    try:
        ipaddress.ip_network(v, strict=False)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return False
    return True


@functools.lru_cache(maxsize=65536)
def _ip_ok(v: object) -> bool:
    try:
        ipaddress.ip_address(v)  # type: ignore[arg-type]
    except ValueError:
        return False
    return True


def _check_cidrs(values: list[str], what: str) -> None:
    for v in values:
        if not (_cidr_ok(v) if isinstance(v, str) else _cidr_ok.__wrapped__(v)):
            raise ValueError(f"{what}: not a CIDR: {v!r}")


def _check_ip(value: str | None, what: str) -> None:
    if value is None:
        return
    if not (_ip_ok(value) if isinstance(value, str) else _ip_ok.__wrapped__(value)):
        raise ValueError(f"{what}: not an IP address: {value!r}")


def _check_ip6(value: str | None, what: str) -> None:
    _check_ip(value, what)
    if value is not None and ":" not in value:
        raise ValueError(f"{what}: not an IPv6 address: {value!r}")


def _check_spi(value: int, what: str) -> None:
    if not 0 < value <= 0xFFFFFFFF:
        raise ValueError(f"{what}: SPI out of range: {value}")


def _check_port(value: int, what: str) -> None:
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"{what}: port out of range: {value}")


def _check_rules(allowed: list[str], denied: list[str], what: str) -> None:
    try:
        parse_rules(allowed, f"{what}allowed")
        parse_rules(denied, f"{what}denied")
    except PolicyError as e:
        raise ValueError(str(e)) from None


def _check_policy_binding(name: str | None, mode: str | None, allowed: list[str],
                          denied: list[str]) -> None:
    if name is None:
        if mode is not None or allowed or denied:
            raise ValueError("policy_mode/policy_allowed/policy_denied without a policy name")
        return
    try:
        check_name(name)
    except BadKey as e:
        raise ValueError(f"policy: {e}") from None
    if mode is None and (allowed or denied):
        raise ValueError("policy rules without a policy_mode")
    _check_rules(allowed, denied, "policy_")


@dataclass(frozen=True, slots=True)
class NodeRecord(Record):
    """A cluster node (nodes/<id>), held by the node's lease."""

    KIND: ClassVar[str] = "nodes"
    id: str
    address: str                      # back-end IP the sprayer routes to
    capacity: int                     # weight for the planner
    state: Literal["ready", "draining"]
    health_port: int
    version: str                      # software version
    started_at: float                 # epoch seconds
    # back-end IPv6 address the sprayer routes clients' IPv6 virtual addresses to (optional,
    # absent in records written before; None: the node carries no inner IPv6 back)
    address6: str | None = None

    def validate(self) -> None:
        _check_ip(self.address, "address")
        _check_ip6(self.address6, "address6")
        _check_port(self.health_port, "health_port")
        if not 0 <= self.capacity <= MAX_CAPACITY:
            raise ValueError(f"capacity must be 0..{MAX_CAPACITY}")


@dataclass(frozen=True, slots=True)
class KeydRecord(Record):
    """A keyd instance (keyd/<id>), held by its lease."""

    KIND: ClassVar[str] = "keyd"
    id: str
    address: str
    version: str
    started_at: float

    def validate(self) -> None:
        _check_ip(self.address, "address")


@dataclass(frozen=True, slots=True, repr=False)
class IkeSaRecord(Record):
    """An IKE SA (ike/<ike-sa-id>). `state` is the IKE core's serialized state: sealed."""

    KIND: ClassVar[str] = "ike"
    SECRET_FIELDS: ClassVar[tuple[str, ...]] = ("state",)
    ike_sa_id: str
    spi_i: int
    spi_r: int
    peer_addr: str
    peer_port: int
    local_port: int
    identity: str                     # the peer's IKE identity
    virtual_ip: str | None
    child_spis: list[int]             # spi_in of each Child SA
    keyd_id: str
    updated_at: float
    state: bytes
    # the client's IPv6 virtual address (an optional field of codec version 1, absent in
    # records written before IPv6 pools)
    virtual_ip6: str | None = None

    __repr__ = _redacted

    def validate(self) -> None:
        if self.ike_sa_id != f"{self.spi_i:016x}{self.spi_r:016x}":
            raise ValueError("ike_sa_id does not match spi_i/spi_r")
        _check_ip(self.peer_addr, "peer_addr")
        _check_ip(self.virtual_ip, "virtual_ip")
        _check_ip6(self.virtual_ip6, "virtual_ip6")
        _check_port(self.peer_port, "peer_port")
        _check_port(self.local_port, "local_port")
        for spi in self.child_spis:
            _check_spi(spi, "child_spis")


@dataclass(frozen=True, slots=True, repr=False)
class ChildSaRecord(Record):
    """A Child SA (sa/<spi_in>). The four keys are sealed at rest.

    GCM and ChaCha20-Poly1305 keys include their 4-byte salt (RFC 4106 §8.1, RFC 7634 §2).
    """

    KIND: ClassVar[str] = "sa"
    SECRET_FIELDS: ClassVar[tuple[str, ...]] = (
        "enc_key_in", "integ_key_in", "enc_key_out", "integ_key_out")
    spi_in: int                       # the SPI the cluster receives with
    spi_out: int                      # the client's SPI
    ike_sa_id: str
    encr: str                         # "aes128gcm16", "aes256", "chacha20poly1305", ...
    integ: str | None                 # "sha256", ... None for AEAD
    esn: bool
    enc_key_in: bytes
    integ_key_in: bytes
    enc_key_out: bytes
    integ_key_out: bytes
    ts_local: list[str]               # protected networks (CIDR)
    ts_remote: list[str]              # the client side, usually virtual_ip/32
    peer_addr: str
    peer_port: int
    udp_encap: bool
    virtual_ip: str | None
    identity: str
    created_at: float
    soft_lifetime_s: int
    hard_lifetime_s: int
    replaces: int | None = None       # spi_in of the SA this one rekeyed
    # The traffic policy the nodes enforce on the SA (docs/operator-guide.md, "Traffic
    # policy"; optional fields of codec version 1, absent in records written before): its
    # name (None: no policy, a full tunnel) and a snapshot of policy/<name> when keyd made
    # the SA, used by a node until it has read policy/ itself (mode None: keyd had no valid
    # policy/<name>; the nodes drop the SA's traffic until they read one).
    policy: str | None = None
    policy_mode: Literal["full", "split", "guest"] | None = None
    policy_allowed: list[str] = field(default_factory=list)
    policy_denied: list[str] = field(default_factory=list)
    # MOBIKE (RFC 4555) was negotiated (optional, absent in records written before): the
    # client announces its moves, keyd writes the new address here once it answered a
    # return routability check, and the nodes follow this record, not the source of
    # ESP (which an authenticated client could point at a third party)
    mobike: bool = False
    # the client's IPv6 virtual address, routed to the SA like `virtual_ip` (optional, as
    # above)
    virtual_ip6: str | None = None

    __repr__ = _redacted

    def validate(self) -> None:
        _check_policy_binding(self.policy, self.policy_mode, self.policy_allowed,
                              self.policy_denied)
        _check_spi(self.spi_in, "spi_in")
        _check_spi(self.spi_out, "spi_out")
        if self.replaces is not None:
            _check_spi(self.replaces, "replaces")
        _check_cidrs(self.ts_local, "ts_local")
        _check_cidrs(self.ts_remote, "ts_remote")
        _check_ip(self.peer_addr, "peer_addr")
        _check_ip(self.virtual_ip, "virtual_ip")
        _check_ip6(self.virtual_ip6, "virtual_ip6")
        _check_port(self.peer_port, "peer_port")
        if not 0 <= self.soft_lifetime_s <= MAX_COUNTER or \
                not 0 <= self.hard_lifetime_s <= MAX_COUNTER:
            raise ValueError("lifetimes must be 0..2**64-1 seconds")


@dataclass(frozen=True, slots=True)
class Assignment(Record):
    """Which node owns an IKE SA's traffic (assign/<ike-sa-id>). `epoch` is the fencing token."""

    KIND: ClassVar[str] = "assign"
    ike_sa_id: str
    node: str
    epoch: int
    phase: Literal["active", "handoff"]
    previous_node: str | None
    updated_at: float

    def validate(self) -> None:
        if not 0 <= self.epoch <= MAX_EPOCH:
            raise ValueError(f"epoch must be 0..{MAX_EPOCH}")


@dataclass(frozen=True, slots=True)
class SeqRecord(Record):
    """Sequence counters of one Child SA (seq/<spi_in>), written by its owner node."""

    KIND: ClassVar[str] = "seq"
    spi: int                          # spi_in
    owner: str                        # node id
    epoch: int                        # the assignment epoch the owner held
    out_seq: int
    in_highest: int
    in_bitmap: int                    # anti-replay window bitmap below in_highest
    kind: Literal["checkpoint", "final"]
    written_at: float
    # Traffic the SA carried over its life (added in codec version 1 as optional fields;
    # None where the writer did not record them, as in records written before): inner
    # packets and bytes, decrypted (in) and encrypted (out), summed over its owners.
    packets_in: int | None = None
    packets_out: int | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None

    def validate(self) -> None:
        _check_spi(self.spi, "spi")
        if min(self.out_seq, self.in_highest, self.in_bitmap, self.epoch) < 0:
            raise ValueError("counters must be >= 0")
        if max(self.out_seq, self.in_highest) > MAX_COUNTER:
            raise ValueError("sequence numbers must fit in 64 bits")
        if self.epoch > MAX_EPOCH:
            raise ValueError(f"epoch must be 0..{MAX_EPOCH}")
        if self.in_bitmap.bit_length() > MAX_BITMAP_BITS:
            raise ValueError(f"in_bitmap wider than {MAX_BITMAP_BITS} bits")
        traffic = (self.packets_in, self.packets_out, self.bytes_in, self.bytes_out)
        if any(n is not None and not 0 <= n <= MAX_COUNTER for n in traffic):
            raise ValueError("traffic counts must be 0..2**64-1")


@dataclass(frozen=True, slots=True)
class PoolLease(Record):
    """A client virtual IP lease (pool/<ip>)."""

    KIND: ClassVar[str] = "pool"
    ip: str
    ike_sa_id: str
    identity: str
    keyd_id: str
    leased_at: float

    def validate(self) -> None:
        _check_ip(self.ip, "ip")


@dataclass(frozen=True, slots=True)
class Policy(Record):
    """A traffic policy (policy/<name>): what its clients may reach (cluster.policy; rules
    such as `10.20.0.0/16`, `10.20.0.80/32 tcp/80,443`, `udp/53`), bound to the clients of
    the connections that name it and to identities by glob pattern (cluster.policy.binding).
    """

    KIND: ClassVar[str] = "policy"
    name: str
    identities: list[str]
    mode: Literal["full", "split", "guest"]
    allowed: list[str] = field(default_factory=list)
    denied: list[str] = field(default_factory=list)

    def validate(self) -> None:
        try:
            check_name(self.name)
        except BadKey as e:
            raise ValueError(f"name: {e}") from None
        if self.mode not in MODES:
            raise ValueError(f"mode: {self.mode!r} not one of {MODES}")
        _check_rules(self.allowed, self.denied, "")


@dataclass(frozen=True, slots=True)
class RedirectRequest(Record):
    """An operator asks an established client to move to another gateway (RFC 5685 §5;
    `clusterctl client redirect`): redirect/<ike-sa-id>. The keyd instance that holds the
    IKE SA (or last wrote it) sends the REDIRECT and removes the record."""

    KIND: ClassVar[str] = "redirect"
    ike_sa_id: str
    gateway: str          # an IP address or a DNS name (what REDIRECT carries)
    requested_at: float

    def validate(self) -> None:
        try:
            parse_ike_sa_id(self.ike_sa_id)
        except BadKey as e:
            raise ValueError(f"ike_sa_id: {e}") from None
        if not gateway_ok(self.gateway):
            raise ValueError(f"gateway: not an address or DNS name: {self.gateway!r}")


_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def gateway_ok(text: str) -> bool:
    """An IP address or a DNS name: what a REDIRECT can carry (RFC 5685 §9)."""
    if _ip_ok(text):
        return True
    labels = text.rstrip(".").split(".")
    return 0 < len(text) <= 253 and all(_LABEL.match(label) for label in labels)


RECORD_TYPES: dict[str, type[Record]] = {
    cls.KIND: cls for cls in (NodeRecord, KeydRecord, IkeSaRecord, ChildSaRecord, Assignment,
                              SeqRecord, PoolLease, Policy, RedirectRequest)
}

R = TypeVar("R", bound=Record)

_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _conform(value: Any, tp: Any, name: str) -> Any:
    """Check a JSON value against a field type; return it (ints widened to float)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arm in typing.get_args(tp):
            if arm is type(None) and value is None:
                return None
        for arm in typing.get_args(tp):
            if arm is not type(None):
                return _conform(value, arm, name)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ValueError(f"{name}: {value!r} not one of {typing.get_args(tp)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{name}: expected a list")
        (item,) = typing.get_args(tp)
        return [_conform(v, item, name) for v in value]
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name}: expected a boolean")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name}: expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name}: expected a number")
        try:
            number = float(value)
        except OverflowError:
            raise ValueError(f"{name}: number out of range") from None
        if not math.isfinite(number):
            raise ValueError(f"{name}: not a finite number")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{name}: expected a string")
        return value
    raise ValueError(f"{name}: unsupported type {tp!r}")


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    """A record class's field names, looked up once (every encode needs them)."""
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def encode_record(record: Record, etcd_key: str,
                  data_key: DataKey | PublicView | None = None) -> bytes:
    """Versioned JSON bytes of a record; secret fields sealed under `data_key` (its current
    key). ValueError for a record with secret fields and no data key (or a PublicView)."""
    record.validate()
    body: dict[str, Any] = {"v": VERSION}
    secrets: dict[str, str] = {}
    for name in _field_names(type(record)):
        value = getattr(record, name)
        if name in record.SECRET_FIELDS:
            secrets[name] = value.hex()
        else:
            body[name] = value
    if secrets:
        if data_key is None:
            raise ValueError(f"{type(record).__name__} carries key material: needs the data key")
        plain = json.dumps(secrets, separators=(",", ":")).encode()
        body["sealed"] = data_key.seal(plain, etcd_key)
    return json.dumps(body, separators=(",", ":")).encode()


def decode_record(cls: type[R], raw: bytes, etcd_key: str,
                  data_key: DataKey | PublicView | None = None) -> R:
    """The record stored at etcd_key. MalformedRecord if it is not a valid `cls` value;
    WrongDataKey if its secrets open under no key of `data_key`'s ring. With a PublicView
    the sealed value is checked for form only and every secret field decodes as b""."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise MalformedRecord(etcd_key, "not JSON") from None
    if not isinstance(body, dict):
        raise MalformedRecord(etcd_key, "not a JSON object")
    version = body.get("v")
    if version != VERSION:
        raise UnknownVersion(etcd_key, f"unknown version {version!r} (this codec reads {VERSION})")
    values: dict[str, Any] = {}
    secrets: dict[str, Any] = {}
    if cls.SECRET_FIELDS:
        token = body.get("sealed")
        if not isinstance(token, str):
            raise MalformedRecord(etcd_key, "sealed: missing")
        if data_key is None:
            raise MalformedRecord(etcd_key, "sealed fields but no data key to open them")
        try:
            if isinstance(data_key, PublicView):
                data_key.check(token, etcd_key)
                secrets = {name: "" for name in cls.SECRET_FIELDS}
            else:
                secrets = json.loads(data_key.open(token, etcd_key))
        except WrongDataKey:
            raise
        except ValueError as exc:
            raise MalformedRecord(etcd_key, f"sealed: {exc}") from None
        if not isinstance(secrets, dict):
            raise MalformedRecord(etcd_key, "sealed: not an object")
    hints = _hints(cls)
    try:
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name in cls.SECRET_FIELDS:
                hexed = secrets.get(f.name)
                if not isinstance(hexed, str):
                    raise ValueError(f"{f.name}: missing")
                values[f.name] = bytes.fromhex(hexed)
            elif f.name in body:
                values[f.name] = _conform(body[f.name], hints[f.name], f.name)
            elif (f.default is dataclasses.MISSING
                  and f.default_factory is dataclasses.MISSING):
                raise ValueError(f"{f.name}: missing")
        record = cls(**values)
        record.validate()
    except ValueError as exc:
        raise MalformedRecord(etcd_key, str(exc)) from None
    return record
