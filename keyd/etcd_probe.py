"""The etcd probe: while etcd is away, look for it on a fresh connection.

When etcd answers again, every user of the store moves onto that connection (the old one may
sit in gRPC's reconnect backoff for many seconds more) and what waited is written
(docs/keyd.md, "When etcd is unreachable").
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from cluster.store.client import Store
from cluster.store.errors import StoreError

PROBE_INTERVAL_S = 1.0


async def probe_etcd(wanted: Callable[[], bool], store: Callable[[], Store],
                     use_store: Callable[[Store], None],
                     resumed: Callable[[], Awaitable[None]]) -> None:
    """Every PROBE_INTERVAL_S while `wanted()` (etcd not answering, or writes waiting): check
    a clone of `store()`; when it answers, `use_store(fresh)` (moves keyd onto it and writes
    what waited; StoreError: try again later), close the old connection, `await resumed()`."""
    while True:
        await asyncio.sleep(PROBE_INTERVAL_S)
        if not wanted():
            continue
        old = store()
        fresh = old.clone()
        try:
            await asyncio.to_thread(fresh.check)
        except StoreError:
            with contextlib.suppress(StoreError):
                fresh.close()
            continue
        try:
            use_store(fresh)
        except StoreError:
            continue
        finally:
            with contextlib.suppress(StoreError):
                old.close()
        await resumed()
