"""keyd's registration: its `keyd/<id>` record held on a lease, registered again after a loss.

The sprayer steers IKE to the registered instances, and the other instances follow `ike/`
only while they see one another here (docs/keyd.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from cluster.store.client import Store
from cluster.store.errors import StoreError
from cluster.store.membership import LeaseLost, Membership
from cluster.store.records import KeydRecord

log = logging.getLogger("keyd")

VERSION = "0.1.0"
LEASE_TTL_S = 5


class Registration:
    """Holds `keyd/<keyd_id>` (address `address`) on a lease in the current store (`store()`:
    the etcd probe may move keyd to a fresh connection); `registered()` runs after each
    successful registration; `lost(silent_s)` when the lease is lost for etcd's silence
    (on the loop's thread)."""

    def __init__(self, keyd_id: str, address: str, store: Callable[[], Store],
                 registered: Callable[[], None],
                 lost: Callable[[float], None] = lambda _s: None) -> None:
        self.keyd_id = keyd_id
        self.address = address
        self._store = store
        self._registered = registered
        self._lost = lost
        self.membership: Membership | None = None
        self._lease_lost = asyncio.Event()

    async def run(self) -> None:
        """Hold keyd/<id> on a lease; after a loss (etcd away for a TTL), register again."""
        backoff = 0.5
        loop = asyncio.get_running_loop()

        def lost(event: LeaseLost) -> None:
            loop.call_soon_threadsafe(self._lease_lost.set)
            if event.reason == "unreachable":
                loop.call_soon_threadsafe(self._lost, float(LEASE_TTL_S))

        while True:
            record = KeydRecord(id=self.keyd_id, address=self.address, version=VERSION,
                                started_at=time.time())
            self._lease_lost.clear()
            membership = Membership(self._store(), record, LEASE_TTL_S, lost)
            try:
                await asyncio.to_thread(membership.start)
            except StoreError as exc:
                if backoff == 0.5:   # once per outage, not per retry
                    log.warning("cannot register in etcd yet; retrying",
                                extra={"error": str(exc)})
                await asyncio.to_thread(membership.stop, False)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.5
            self.membership = membership
            log.info("registered", extra={"key": membership.key, "lease": membership.lease_id})
            self._registered()
            await self._lease_lost.wait()
            self.membership = None
            await asyncio.to_thread(membership.stop, False)
            log.warning("registration lost; registering again when etcd answers")

    async def stop(self) -> None:
        """Give the lease back (the record goes with it)."""
        if self.membership is not None:
            await asyncio.to_thread(self.membership.stop)
