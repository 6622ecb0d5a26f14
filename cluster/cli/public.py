"""Read the keyspace without key material: what operators and hooks need.

`clusterctl` and `cluster-hooks` show and react to who is connected where; neither needs, nor
should hold, the cluster data key. `SecretsWithheld` stands in for the data key: records decode
with every sealed field empty (b""), and nothing can be sealed with it, so a tool built on
this view cannot print, log or write key material even by mistake.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from cluster.store.client import Store
from cluster.store.keyspace import Keyspace
from cluster.store.records import RECORD_TYPES
from cluster.store.seal import DataKey

_SECRET_FIELDS = sorted({name for cls in RECORD_TYPES.values() for name in cls.SECRET_FIELDS})


class SecretsWithheld(DataKey):
    """A data key that opens every sealed value as "empty" and seals nothing."""

    __slots__ = ()

    def __init__(self) -> None:  # no key bytes at all
        self.key_id = "withheld"
        self.source = "no data key (secrets withheld)"

    def seal(self, plaintext: bytes, etcd_key: str) -> str:
        raise ValueError(f"{etcd_key}: this tool holds no data key and writes no key material")

    def open(self, token: str, etcd_key: str) -> bytes:
        return json.dumps({name: "" for name in _SECRET_FIELDS}).encode()


def open_store(endpoints: Sequence[str], cluster: str, prefix: str, *,
               cacert: str | None = None, cert: str | None = None, key: str | None = None,
               timeout_s: float = 2.0) -> Store:
    """A store on the public view of the keyspace (sealed fields decode as empty)."""
    return Store(endpoints, Keyspace(cluster, prefix), SecretsWithheld(), cacert=cacert,
                 cert=cert, key=key, timeout_s=timeout_s)
