"""Read the keyspace without key material: what operators and hooks need.

`clusterctl` and `cluster-hooks` show and react to who is connected where; neither needs, nor
should hold, the cluster data key. They open the store with the store's `PublicView`: records
decode with every sealed field empty (b""), and nothing can be sealed through it, so a tool
built on this view cannot print, log or write key material even by mistake.
"""

from __future__ import annotations

from collections.abc import Sequence

from cluster.store.client import Store
from cluster.store.keyspace import Keyspace
from cluster.store.seal import PublicView


def open_store(endpoints: Sequence[str], cluster: str, prefix: str, *,
               cacert: str | None = None, cert: str | None = None, key: str | None = None,
               timeout_s: float = 2.0) -> Store:
    """A store on the public view of the keyspace (sealed fields decode as empty)."""
    return Store(endpoints, Keyspace(cluster, prefix), PublicView(), cacert=cacert,
                 cert=cert, key=key, timeout_s=timeout_s)
