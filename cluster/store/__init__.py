"""The cluster store: the etcd keyspace every component shares.

    from cluster.store import Store, Keyspace, ChildSaRecord, load_data_key

keyspace.py builds keys, records.py the typed records and codecs, seal.py seals key material,
client.py is the `Store` facade, watch.py watches (one kind, or several under the cluster
root in one revision order), membership.py lease-held records, rbac.py etcd users and roles,
errors.py the exceptions (the only place etcd/gRPC failures are translated).

Without the data key: `Store(endpoints, keyspace, PublicView())` reads public fields only.
Key rotation: a `DataKey` is a ring (current key seals, retired keys open); `Store.reseal()`
rewrites values sealed under a retired key; `python -m cluster.store.rotate` runs it.
"""

from .client import Guard, Listing, ResealReport, Store, Versioned, key_for, record_name
from .errors import (
    CompactedError,
    FutureRevision,
    PermissionDenied,
    StoreError,
    StoreUnavailable,
)
from .keyspace import BadKey, Keyspace, ike_sa_id, parse_ike_sa_id, parse_spi, spi_hex
from .membership import LeaseLost, Membership
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
    UnknownVersion,
    decode_record,
    encode_record,
)
from .seal import (
    DataKey,
    DataKeyError,
    PublicView,
    WrongDataKey,
    load_data_key,
    write_data_key,
)
from .watch import (
    KeyspaceWatcher,
    PrefixWatcher,
    RecordDeleted,
    RecordMalformed,
    RecordPut,
    WatchDisconnected,
    WatchEvent,
    WatchProgress,
    WatchResynced,
    asyncio_sink,
    in_loop,
)

__all__ = [
    "Assignment",
    "BadKey",
    "ChildSaRecord",
    "CompactedError",
    "DataKey",
    "DataKeyError",
    "FutureRevision",
    "Guard",
    "IkeSaRecord",
    "KeydRecord",
    "Keyspace",
    "KeyspaceWatcher",
    "LeaseLost",
    "Listing",
    "MalformedRecord",
    "Membership",
    "NodeRecord",
    "PermissionDenied",
    "Policy",
    "PoolLease",
    "PrefixWatcher",
    "PublicView",
    "Record",
    "RecordDeleted",
    "RecordMalformed",
    "RecordPut",
    "RedirectRequest",
    "ResealReport",
    "SeqRecord",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "UnknownVersion",
    "Versioned",
    "WatchDisconnected",
    "WatchEvent",
    "WatchProgress",
    "WatchResynced",
    "WrongDataKey",
    "asyncio_sink",
    "decode_record",
    "encode_record",
    "ike_sa_id",
    "in_loop",
    "key_for",
    "load_data_key",
    "parse_ike_sa_id",
    "parse_spi",
    "record_name",
    "spi_hex",
    "write_data_key",
]
