"""One leader among several sprayers, elected through etcd.

The leader holds `<root>sprayer/leader` (value: its id) on a lease of `ttl_s`. A standby
tries to create the key (create-if-absent) every poll; when the leader dies its lease runs
out and a standby gets the key within the TTL plus one poll. Every write the leader makes
to assign/ carries `guard` (the key's mod_revision) in the same transaction, so a deposed
leader that has not noticed yet cannot change any assignment: etcd refuses it.

The store has no record kind for this key, so the transaction goes through the store's raw
client inside `translated()`: gRPC errors still surface as StoreError only.
"""

from __future__ import annotations

import logging
import time

from cluster.store.client import Guard, Store
from cluster.store.errors import StoreError, translated

log = logging.getLogger("sprayer.leader")


class Leadership:
    def __init__(self, store: Store, sprayer_id: str, ttl_s: int) -> None:
        self.store = store
        self.id = sprayer_id
        self.ttl_s = max(2, int(ttl_s))
        self.key = f"{store.keyspace.root}sprayer/leader"
        self.lease_id = 0
        self.mod_revision = 0
        self._deadline = 0.0   # monotonic time until which leadership is provable

    @property
    def is_leader(self) -> bool:
        return self.mod_revision != 0 and time.monotonic() < self._deadline

    @property
    def guard(self) -> Guard:
        return Guard(self.key, self.mod_revision)

    def holder(self) -> str | None:
        raw = self.store.raw_get(self.key)
        return None if raw is None else raw.decode(errors="replace")

    def step(self) -> bool:
        """Acquire (standby) or refresh (leader); return whether this sprayer leads now.
        Raises StoreError when etcd does not answer (leadership then lapses by itself)."""
        if self.mod_revision:
            return self._refresh()
        return self._acquire()

    def _acquire(self) -> bool:
        client = self.store.raw
        sent = time.monotonic()
        with translated(self.store.endpoint):
            held, _ = client.get(self.key)
            if held is not None:
                return False
            lease = client.lease(self.ttl_s)
            t = client.transactions
            ok, _ = client.transaction(
                compare=[t.create(self.key) == 0],
                success=[t.put(self.key, self.id, lease=lease.id)], failure=[])
            if not ok:
                client.revoke_lease(lease.id)
                return False
            _, meta = client.get(self.key)
        self.lease_id = int(lease.id)
        self.mod_revision = int(meta.mod_revision)
        self._deadline = sent + self.ttl_s
        log.info("became leader", extra={"sprayer": self.id, "revision": self.mod_revision})
        return True

    def _refresh(self) -> bool:
        sent = time.monotonic()
        try:
            ttl = self.store.keepalive(self.lease_id)
        except StoreError:
            if time.monotonic() >= self._deadline:
                self._lapse("etcd unreachable for a whole lease TTL")
            raise
        if ttl <= 0:
            self._lapse("lease expired")
            return False
        self._deadline = sent + ttl
        return True

    def _lapse(self, why: str) -> None:
        if self.mod_revision:
            (log.info if why == "resigned" else log.error)(
                "leadership ended: %s", why, extra={"sprayer": self.id})
        self.mod_revision = 0
        self.lease_id = 0

    def resign(self) -> None:
        """Give up the key now (clean shutdown) so a standby need not wait for the TTL."""
        if self.lease_id:
            try:
                self.store.revoke_lease(self.lease_id)
            except StoreError as exc:
                log.warning("could not resign: %s", exc)
        self._lapse("resigned")
