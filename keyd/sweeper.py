"""The sweeper: what dead keyd instances left behind in etcd, removed.

An IKE SA untouched for a lifetime and a half is gone for good.
"""

from __future__ import annotations

import asyncio
import logging

from cluster.store.errors import StoreError

from .engine import Engine

log = logging.getLogger("keyd")


async def sweep(engine: Engine, interval_s: float, ike_lifetime_s: float) -> None:
    """Every `interval_s` (never when it is 0 or less), remove IKE SAs untouched for 1.5
    lifetimes; the reading and removing in a thread (it lists every IKE SA), what the engine
    holds updated on the loop."""
    if interval_s <= 0:
        return
    max_age = ike_lifetime_s * 1.5
    while True:
        await asyncio.sleep(interval_s)
        try:
            gone = await asyncio.to_thread(engine.persister.sweep_expired, max_age)
            engine.swept(gone)
        except StoreError:
            continue
        if gone:
            log.info("expired IKE SAs removed", extra={"count": len(gone)})
