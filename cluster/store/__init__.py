"""The cluster store: the etcd keyspace every component shares.

    from cluster.store import Store, Keyspace, ChildSaRecord, load_data_key

keyspace.py builds keys, records.py the typed records and codecs, seal.py seals key material,
client.py is the `Store` facade, watch.py prefix watches, membership.py lease-held records,
errors.py the exceptions (the only place etcd/gRPC failures are translated).
"""

from .client import Guard, Listing, Store, Versioned, key_for, record_name
from .errors import (
    CompactedError,
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
    SeqRecord,
    UnknownVersion,
    decode_record,
    encode_record,
)
from .seal import DataKey, DataKeyError, WrongDataKey, load_data_key, write_data_key
from .watch import (
    PrefixWatcher,
    RecordDeleted,
    RecordPut,
    WatchDisconnected,
    WatchEvent,
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
    "Guard",
    "IkeSaRecord",
    "KeydRecord",
    "Keyspace",
    "LeaseLost",
    "Listing",
    "MalformedRecord",
    "Membership",
    "NodeRecord",
    "PermissionDenied",
    "Policy",
    "PoolLease",
    "PrefixWatcher",
    "Record",
    "RecordDeleted",
    "RecordPut",
    "SeqRecord",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "UnknownVersion",
    "Versioned",
    "WatchDisconnected",
    "WatchEvent",
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
