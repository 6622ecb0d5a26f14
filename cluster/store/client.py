"""`Store`: the typed facade over etcd that every component uses.

Blocking calls (gRPC underneath); asyncio daemons call them through `asyncio.to_thread`.
Every etcd/gRPC failure surfaces as a StoreError (errors.py) naming the endpoint(s).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import urlsplit

import etcd3
import etcd3.utils
import grpc

from .errors import StoreError, StoreUnavailable, translated
from .keyspace import Keyspace
from .records import (
    Assignment,
    ChildSaRecord,
    IkeSaRecord,
    KeydRecord,
    MalformedRecord,
    NodeRecord,
    Policy,
    PoolLease,
    Record,
    RedirectRequest,
    SeqRecord,
    decode_record,
    encode_record,
)
from .seal import DataKey, PublicView, WrongDataKey, sealed_key_id
from .watch import KeyspaceWatcher, PrefixWatcher, WatchEvent

if TYPE_CHECKING:
    from cluster.config import Config

log = logging.getLogger("cluster.store")

R = TypeVar("R", bound=Record)
T = TypeVar("T")

# etcd's default --max-txn-ops is 128
TXN_MAX_OPS = 128
SPI_MIN = 256  # RFC 4303 §2.1: SPIs 1-255 are reserved by IANA
SPI_ATTEMPTS = 32
SCAN_PAGE = 1000  # records per Range page: ~1 KiB each keeps a page far below 4 MiB


def record_name(record: Record) -> str:
    """The last key component of a record: its id, SPI, IKE SA id, IP or name."""
    if isinstance(record, NodeRecord | KeydRecord):
        return record.id
    if isinstance(record, IkeSaRecord | Assignment | RedirectRequest):
        return record.ike_sa_id
    if isinstance(record, ChildSaRecord):
        return f"{record.spi_in:08x}"
    if isinstance(record, SeqRecord):
        return f"{record.spi:08x}"
    if isinstance(record, PoolLease):
        return record.ip
    if isinstance(record, Policy):
        return record.name
    raise TypeError(f"not a store record: {type(record).__name__}")


_BUILDERS: dict[str, Callable[[Keyspace, Any], str]] = {
    "nodes": Keyspace.node, "keyd": Keyspace.keyd, "ike": Keyspace.ike,
    "assign": Keyspace.assign, "pool": Keyspace.pool, "policy": Keyspace.policy,
    "redirect": Keyspace.redirect,
    "sa": lambda ks, n: ks.sa(int(n, 16)), "seq": lambda ks, n: ks.seq(int(n, 16)),
}


def key_for(keyspace: Keyspace, cls: type[Record], name: str | int) -> str:
    """The etcd key of the record of kind `cls` named `name` (an SPI may be an int)."""
    if isinstance(name, int):
        return keyspace.kind_prefix(cls.KIND) + f"{name:08x}"
    return _BUILDERS[cls.KIND](keyspace, name)


@dataclass(frozen=True, slots=True)
class Versioned(Generic[T]):
    """A record as read from etcd with the revisions a compare-and-swap needs."""

    record: T
    key: str
    mod_revision: int
    create_revision: int
    lease_id: int


@dataclass(frozen=True, slots=True)
class Listing(Generic[T]):
    """Every record of one kind at one revision; values that failed to decode in `malformed`."""

    items: list[Versioned[T]]
    revision: int
    malformed: list[MalformedRecord] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Guard:
    """A transaction precondition: `key` has this mod_revision (0 = the key does not exist)."""

    key: str
    mod_revision: int


#: gRPC's reconnection back-off, capped: its default grows to 120 s, so a component cut off
#: from etcd for half a minute went on waiting for seconds after etcd was back (11.6 s after
#: a 30 s outage, measured); capped at 1 s it tries again at most a second apart, one TCP
#: connection attempt to each endpoint per second while etcd is away
RECONNECT_BACKOFF_MAX_MS = 1000
CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 250),
                   ("grpc.min_reconnect_backoff_ms", 250),
                   ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MAX_MS)]


def _endpoint(url: str, cacert: str | None, cert: str | None, key: str | None,
              time_retry_s: float) -> Any:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if not parts.hostname or not parts.port:
        raise StoreError(f"bad etcd endpoint {url!r}: expected http(s)://host:port")
    secure = parts.scheme == "https" or cacert is not None
    if not secure and (cert is not None or key is not None):
        # grpc would connect in plain text and never present the certificate
        raise StoreError(f"etcd endpoint {url}: a client certificate needs TLS "
                         "(an https:// endpoint or a CA certificate)")
    creds = None
    if secure:
        def read(path: str | None) -> bytes | None:
            if path is None:
                return None
            try:
                with open(path, "rb") as f:
                    return f.read()
            except OSError as exc:
                raise StoreError(f"etcd TLS file {path}: {exc.strerror}") from None
        creds = grpc.ssl_channel_credentials(read(cacert), read(key), read(cert))
    return etcd3.Endpoint(
        parts.hostname, parts.port, secure=secure, creds=creds, time_retry=time_retry_s,
        opts=CHANNEL_OPTIONS)


@dataclass(frozen=True, slots=True)
class ResealReport:
    """What `Store.reseal` did: values re-sealed under the current key, values already under
    it, and keys left under another key (a concurrent writer kept changing them, or no key
    of the ring opens them: listed in `failed` with the reason)."""

    resealed: int
    current: int
    failed: dict[str, str]


class Store:
    """Typed access to the cluster's keyspace in etcd.

    `data_key`: a DataKey (ring) to seal and open key material; a PublicView to read public
    fields only (sealed fields decode as b"", nothing sealed can be written); None for
    components that never touch sealed kinds (reading one is a MalformedRecord)."""

    def __init__(self, endpoints: Sequence[str], keyspace: Keyspace | None = None,
                 data_key: DataKey | PublicView | None = None, *, cacert: str | None = None,
                 cert: str | None = None, key: str | None = None,
                 timeout_s: float = 2.0) -> None:
        if not endpoints:
            raise StoreError("no etcd endpoints configured")
        if (cert is None) != (key is None):
            raise StoreError("etcd client cert and key go together: give both or neither")
        self.keyspace = keyspace or Keyspace()
        self.data_key = data_key
        self.endpoints = list(endpoints)
        self.endpoint = ",".join(self.endpoints)
        self.timeout_s = timeout_s
        self._tls = (cacert, cert, key)
        eps = [_endpoint(u, cacert, cert, key, 0.0 if len(endpoints) == 1 else 1.0)
               for u in endpoints]
        self._client = etcd3.MultiEndpointEtcd3Client(
            endpoints=eps, timeout=timeout_s, failover=True)

    @classmethod
    def from_config(cls, config: Config, data_key: DataKey | PublicView | None = None) -> Store:
        """A store for a loaded configuration ([cluster] and [etcd])."""
        e = config.etcd
        return cls(e.endpoints, Keyspace(config.cluster.name, config.cluster.prefix), data_key,
                   cacert=e.cacert, cert=e.cert, key=e.key, timeout_s=e.timeout_s)

    def clone(self) -> Store:
        """A second store on its own connection, same settings (e.g. for another thread)."""
        cacert, cert, key = self._tls
        return Store(self.endpoints, self.keyspace, self.data_key, cacert=cacert, cert=cert,
                     key=key, timeout_s=self.timeout_s)

    def close(self) -> None:
        with translated(self.endpoint):
            self._client.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def raw(self) -> Any:
        """The etcd3 client, for the store's own modules only."""
        return self._client

    def revision(self) -> int:
        """etcd's current revision. StoreUnavailable if etcd does not answer."""
        with translated(self.endpoint):
            resp = self._client.get_response(self.keyspace.root, keys_only=True)
            return int(resp.header.revision)

    check = revision

    # -- keys and codecs ------------------------------------------------------------------
    def key_of(self, record: Record) -> str:
        return key_for(self.keyspace, type(record), record_name(record))

    def encode(self, record: Record) -> tuple[str, bytes]:
        k = self.key_of(record)
        return k, encode_record(record, k, self.data_key)

    def decode(self, cls: type[R], raw: bytes, key: str) -> R:
        """The record stored at `key`; MalformedRecord also when the record names another key
        than the one it is stored under (e.g. nodes/n1 holding node n2's record)."""
        record = decode_record(cls, raw, key, self.data_key)
        name = record_name(record)
        if not key.endswith("/" + name):
            raise MalformedRecord(key, f"record is for {name!r}, not for this key")
        return record

    # -- raw bytes (tests, tools) ---------------------------------------------------------
    def raw_get(self, key: str) -> bytes | None:
        with translated(self.endpoint):
            value, _ = self._client.get(key)
        return None if value is None else bytes(value)

    def raw_get_revision(self, key: str) -> tuple[bytes, int] | None:
        """The raw value at `key` and its mod revision, or None: for removing a value that
        does not decode, guarded against a concurrent rewrite."""
        with translated(self.endpoint):
            value, meta = self._client.get(key)
        return None if value is None else (bytes(value), int(meta.mod_revision))

    def raw_put(self, key: str, value: bytes, lease: int | None = None) -> int:
        with translated(self.endpoint):
            return int(self._client.put(key, value, lease=lease).header.revision)

    # -- typed reads ----------------------------------------------------------------------
    def get(self, cls: type[R], name: str | int) -> Versioned[R] | None:
        """The record of kind `cls` named `name`, or None. MalformedRecord / WrongDataKey if
        the stored value does not decode."""
        k = key_for(self.keyspace, cls, name)
        with translated(self.endpoint):
            resp = self._client.get_response(k)
        if not resp.kvs:
            return None
        kv = resp.kvs[0]
        return Versioned(self.decode(cls, kv.value, k), k, kv.mod_revision, kv.create_revision,
                         kv.lease)

    def get_many(self, cls: type[R], names: Iterable[str | int], strict: bool = True
                 ) -> dict[str | int, Versioned[R] | None]:
        """The records of kind `cls` named `names` (None for an absent one), read in
        transactions of up to TXN_MAX_OPS gets (each transaction at one revision). A value
        that does not decode raises MalformedRecord / WrongDataKey, or with strict=False
        reads as None and is logged."""
        rpc = etcd3.etcdrpc
        wanted = list(dict.fromkeys(names))
        out: dict[str | int, Versioned[R] | None] = {}
        for i in range(0, len(wanted), TXN_MAX_OPS):
            chunk = wanted[i:i + TXN_MAX_OPS]
            keys = [key_for(self.keyspace, cls, name) for name in chunk]
            ops = [rpc.RequestOp(request_range=rpc.RangeRequest(key=k.encode()))
                   for k in keys]
            resp = self._txn([], ops)
            for name, k, r in zip(chunk, keys, resp.responses, strict=True):
                kvs = r.response_range.kvs
                if not kvs:
                    out[name] = None
                    continue
                kv = kvs[0]
                try:
                    record = self.decode(cls, kv.value, k)
                except (MalformedRecord, WrongDataKey) as exc:
                    if strict:
                        raise
                    log.warning("%s: unreadable, read as absent: %s", k, exc)
                    out[name] = None
                    continue
                out[name] = Versioned(record, k, kv.mod_revision, kv.create_revision,
                                      kv.lease)
        return out

    def scan(self, prefix: str, page: int = SCAN_PAGE,
             revision: int | None = None) -> tuple[list[Any], int]:
        """Every raw key-value under `prefix` at one revision (None: the current one), read
        in pages pinned to that revision (one Range response must stay under gRPC's 4 MiB
        message limit). Returns (kvs, revision). CompactedError if etcd no longer has
        `revision`, FutureRevision if it has not reached it."""
        start = prefix.encode()
        end = etcd3.utils.prefix_range_end(start)
        kvs: list[Any] = []
        with translated(self.endpoint, revision):
            while True:
                resp = self._client.get_range_response(
                    start, end, sort_order="ascend", limit=page, revision=revision)
                if revision is None:
                    revision = int(resp.header.revision)
                kvs.extend(resp.kvs)
                if not resp.more or not resp.kvs:
                    return kvs, revision
                start = resp.kvs[-1].key + b"\0"

    def scan_many(self, prefixes: Iterable[str], page: int = SCAN_PAGE,
                  revision: int | None = None) -> tuple[list[Any], int]:
        """`scan` of several prefixes, all at one revision (the first read's, if None)."""
        kvs: list[Any] = []
        for prefix in prefixes:
            more, revision = self.scan(prefix, page, revision)
            kvs.extend(more)
        if revision is None:
            revision = self.revision()
        return kvs, revision

    def list(self, cls: type[R], revision: int | None = None) -> Listing[R]:
        """Every record of one kind, at `revision` (None: the current one). Malformed values
        are returned apart. CompactedError if etcd no longer has `revision`."""
        kvs, revision = self.scan(self.keyspace.kind_prefix(cls.KIND), revision=revision)
        items: list[Versioned[R]] = []
        bad: list[MalformedRecord] = []
        for kv in kvs:
            k = kv.key.decode("utf-8", "replace")
            try:
                items.append(Versioned(self.decode(cls, kv.value, k), k, kv.mod_revision,
                                       kv.create_revision, kv.lease))
            except MalformedRecord as exc:
                bad.append(exc)
        return Listing(items, revision, bad)

    # -- writes ---------------------------------------------------------------------------
    def put(self, record: Record, lease: int | None = None) -> int:
        """Write a record unconditionally; return the new revision."""
        k, v = self.encode(record)
        with translated(self.endpoint):
            return int(self._client.put(k, v, lease=lease).header.revision)

    def delete(self, cls: type[Record], name: str | int) -> bool:
        k = key_for(self.keyspace, cls, name)
        with translated(self.endpoint):
            return bool(self._client.delete(k))

    def commit(self, puts: Iterable[Record] = (), deletes: Iterable[str] = (),
               guards: Iterable[Guard] = (), lease: int | None = None) -> bool:
        """One etcd transaction: if every guard holds, write `puts` and delete the keys in
        `deletes`; return whether it did. At most TXN_MAX_OPS operations."""
        return self.commit_revision(puts, deletes, guards, lease) is not None

    def commit_revision(self, puts: Iterable[Record] = (), deletes: Iterable[str] = (),
                        guards: Iterable[Guard] = (), lease: int | None = None) -> int | None:
        """`commit`, returning the revision the transaction wrote (None: a guard did not
        hold, nothing written). The request is built directly from the records (no
        intermediate operation objects: this is the write path of every handshake)."""
        rpc = etcd3.etcdrpc
        ops: list[Any] = []
        for record in puts:
            k, v = self.encode(record)
            ops.append(rpc.RequestOp(request_put=rpc.PutRequest(
                key=k.encode(), value=v, lease=lease or 0)))
        for k in deletes:
            ops.append(rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(
                key=k.encode())))
        if len(ops) > TXN_MAX_OPS:
            raise StoreError(f"transaction of {len(ops)} operations exceeds {TXN_MAX_OPS}")
        compare = [rpc.Compare(result=rpc.Compare.EQUAL, target=rpc.Compare.MOD,
                               key=g.key.encode(), mod_revision=g.mod_revision)
                   for g in guards]
        resp = self._txn(compare, ops)
        return int(resp.header.revision) if resp.succeeded else None

    def _txn(self, compare: Iterable[Any], ops: Iterable[Any]) -> Any:
        """One etcd Txn request (compare → ops, no failure branch); errors translated."""
        client = self._client
        with translated(self.endpoint):
            try:
                return client.kvstub.Txn(
                    etcd3.etcdrpc.TxnRequest(compare=compare, success=ops, failure=[]),
                    client.timeout, credentials=client.call_credentials,
                    metadata=client.metadata)
            except grpc.RpcError as exc:
                client._manage_grpc_errors(exc)   # marks a failed endpoint, then raises
                raise

    def put_many(self, records: Iterable[Record], lease: int | None = None) -> int:
        """Write many records in transactions of up to TXN_MAX_OPS; return the last revision.
        Each batch is atomic; the whole set is not."""
        t = self._client.transactions
        revision = 0
        batch: list[Any] = []

        def flush() -> None:
            nonlocal revision, batch
            if batch:
                resp = self._txn([], self._client._ops_to_requests(batch))
                revision = int(resp.header.revision)
                batch = []

        for record in records:
            k, v = self.encode(record)
            batch.append(t.put(k, v, lease=lease))
            if len(batch) == TXN_MAX_OPS:
                flush()
        flush()
        return revision

    def create(self, record: Record, lease: int | None = None) -> bool:
        """Create-if-absent: write the record only if its key does not exist."""
        return self.commit([record], guards=[Guard(self.key_of(record), 0)], lease=lease)

    def update_if(self, record: Record, mod_revision: int, lease: int | None = None) -> bool:
        """Compare-and-swap: write only if the key's mod_revision is still `mod_revision`."""
        return self.commit([record], guards=[Guard(self.key_of(record), mod_revision)],
                           lease=lease)

    def delete_if(self, cls: type[Record], name: str | int, mod_revision: int) -> bool:
        k = key_for(self.keyspace, cls, name)
        return self.commit(deletes=[k], guards=[Guard(k, mod_revision)])

    def allocate_spi(self, make: Callable[[int], ChildSaRecord], lease: int | None = None,
                     draw: Callable[[], int] | None = None) -> ChildSaRecord:
        """A cluster-unique inbound SPI: draw a random 32-bit SPI (>= 256), build the Child SA
        with `make(spi)` and create sa/<spi> if absent; draw again on collision.
        `draw` replaces the random source (tests)."""
        for _ in range(SPI_ATTEMPTS):
            spi = draw() if draw else int.from_bytes(os.urandom(4), "big")
            if spi < SPI_MIN:
                continue
            record = make(spi)
            if record.spi_in != spi:
                raise ValueError("make(spi) must return a Child SA with spi_in == spi")
            if self.create(record, lease=lease):
                return record
        raise StoreError(f"no free SPI after {SPI_ATTEMPTS} attempts")

    # -- leases ---------------------------------------------------------------------------
    def grant_lease(self, ttl_s: int) -> int:
        with translated(self.endpoint):
            return int(self._client.lease(ttl_s).id)

    def revoke_lease(self, lease_id: int) -> None:
        with translated(self.endpoint):
            self._client.revoke_lease(lease_id)

    def keepalive(self, lease_id: int, timeout_s: float | None = None) -> int:
        """Refresh a lease once; return its new TTL in seconds (0: the lease is gone).
        `timeout_s` bounds this call below the store's timeout (a lease holder's deadline)."""
        client = self._client
        timeout = client.timeout if timeout_s is None else min(client.timeout, timeout_s)
        with translated(self.endpoint):
            try:
                responses = list(client.leasestub.LeaseKeepAlive(
                    iter([etcd3.etcdrpc.LeaseKeepAliveRequest(ID=lease_id)]),
                    max(0.01, timeout), credentials=client.call_credentials,
                    metadata=client.metadata))
            except grpc.RpcError as exc:
                client._manage_grpc_errors(exc)   # marks a failed endpoint, then raises
                raise
        if not responses:
            raise StoreUnavailable(self.endpoint, "no keepalive answer")
        return int(responses[-1].TTL)

    # -- key rotation ---------------------------------------------------------------------
    def reseal(self, kinds: Iterable[type[Record]] = (IkeSaRecord, ChildSaRecord),
               passes: int = 3) -> ResealReport:
        """Rewrite every sealed value that is not under the data key's current key, sealed
        under it (each a compare-and-swap on its mod_revision, keeping its lease), so the
        retired keys can be dropped. A value changed meanwhile is read again, up to `passes`
        times. Values that open under no key of the ring are reported, never touched."""
        if not isinstance(self.data_key, DataKey):
            raise StoreError("re-sealing needs the data key (current and retired keys)")
        resealed = current = 0
        failed: dict[str, str] = {}
        for cls in kinds:
            if not cls.SECRET_FIELDS:
                continue
            todo: set[str] | None = None
            for _ in range(passes):
                kvs, _rev = self.scan(self.keyspace.kind_prefix(cls.KIND))
                raced: set[str] = set()
                for kv in kvs:
                    k = kv.key.decode("utf-8", "replace")
                    if todo is not None and k not in todo:
                        continue
                    try:
                        token = json.loads(kv.value).get("sealed")
                        if self.data_key.is_current(token):
                            current += 1
                            failed.pop(k, None)
                            continue
                        record = self.decode(cls, kv.value, k)
                    except (ValueError, AttributeError, TypeError, WrongDataKey) as exc:
                        failed[k] = str(exc)
                        continue
                    lease = int(kv.lease) or None
                    if self.update_if(record, int(kv.mod_revision), lease=lease):
                        resealed += 1
                        failed.pop(k, None)
                    else:
                        raced.add(k)
                        failed[k] = "changed while being re-sealed"
                if not raced:
                    break
                todo = raced
        return ResealReport(resealed, current, failed)

    def sealed_key_ids(self, kinds: Iterable[type[Record]] = (IkeSaRecord, ChildSaRecord)
                       ) -> dict[str, int]:
        """How many stored values each data key id sealed (a value that is not a sealed
        record counts under "unreadable"). Needs no data key."""
        counts: dict[str, int] = {}
        for cls in kinds:
            if not cls.SECRET_FIELDS:
                continue
            kvs, _rev = self.scan(self.keyspace.kind_prefix(cls.KIND))
            for kv in kvs:
                try:
                    key_id = sealed_key_id(json.loads(kv.value)["sealed"])
                except (ValueError, KeyError, TypeError):
                    key_id = "unreadable"
                counts[key_id] = counts.get(key_id, 0) + 1
        return counts

    def check_data_key(self, data_key: DataKey) -> None:
        """Refuse a data key that opens none of the stored key material: WrongDataKey naming
        the key's source and the key ids that sealed what is stored. Nothing stored, or some
        of it under a key of the ring (a rotation under way), passes. StoreError if etcd
        cannot be read."""
        counts = self.sealed_key_ids()
        counts.pop("unreadable", None)
        if not counts or set(counts) & set(data_key.key_ids):
            return
        total = sum(counts.values())
        ids = ", ".join(sorted(counts))
        raise WrongDataKey(
            f"the data key from {data_key.source} (id {data_key.key_id}) opens none of the "
            f"{total} sealed value(s) in {self.keyspace.root}: they were sealed under "
            f"{ids}; is this the cluster's data key?")

    def wrong_data_key(self, data_key: DataKey) -> str | None:
        """What a daemon checks at start: the WrongDataKey message if `data_key` opens none
        of the stored key material (the daemon should exit 2 with it), else None. An etcd
        that cannot be read is no reason to refuse: logged, None."""
        try:
            self.check_data_key(data_key)
        except WrongDataKey as exc:
            return str(exc)
        except StoreError as exc:
            log.warning("data key not checked against etcd: %s", exc)
        return None

    # -- watches --------------------------------------------------------------------------
    def watch(self, cls: type[R], on_event: Callable[[WatchEvent], None],
              start_revision: int | None = None,
              report_malformed: bool = False) -> PrefixWatcher:
        """Start a watcher on every record of kind `cls` (see watch.py)."""
        w = PrefixWatcher(self, cls, on_event, start_revision=start_revision,
                          report_malformed=report_malformed)
        w.start()
        return w

    def watch_keyspace(self, on_event: Callable[[WatchEvent], None],
                       kinds: Iterable[str] | None = None,
                       start_revision: int | None = None) -> KeyspaceWatcher:
        """Start one watcher on several kinds (None: all) in one revision order (watch.py)."""
        w = KeyspaceWatcher(self, on_event, kinds, start_revision=start_revision)
        w.start()
        return w


__all__ = ["Guard", "Listing", "ResealReport", "Store", "Versioned", "WrongDataKey", "key_for",
           "record_name"]
