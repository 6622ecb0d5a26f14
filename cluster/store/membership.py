"""Membership: a record (nodes/<id>, keyd/<id>) held by an etcd lease with keepalive.

The holder runs a keepalive thread. If the lease expires, or etcd stays silent for a whole
TTL since the last keepalive that it answered, the holder gets one `LeaseLost` event: from
then on etcd may have deleted its record and another node may own its clients, so the
holder must fence itself (stop sending on SAs it no longer provably owns).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .client import Store
from .errors import StoreError
from .records import KeydRecord, NodeRecord

log = logging.getLogger(__name__)

#: keepalives sent per TTL while etcd answers
KEEPALIVES_PER_TTL = 6
#: the pause before the keepalive after a failed one
RETRY_S = 0.25


class MembershipEvent:
    """Marker base of membership events."""


@dataclass(frozen=True, slots=True)
class LeaseLost(MembershipEvent):
    lease_id: int
    reason: str          # "expired" (etcd said so) or "unreachable" (no answer for a TTL)
    key: str             # the record the lease held


class Membership:
    """Hold `record` under a lease of `ttl_s` seconds, refreshed every `ttl_s / 6`.

    Six a TTL rather than etcd's customary three: when etcd's leader dies the others elect
    another in one to two election timeouts (1 s by etcd's default, 500 ms as the project
    runs etcd: cluster.procs, the playbooks), and the keepalive that fails meanwhile must
    leave the holder most of a TTL to get through. A 3 s lease was lost to a leader's kill
    with keepalives a second apart; it was kept with them half a second apart and a 500 ms
    election timeout (tests/integration/store/test_store_membership.py)."""

    def __init__(self, store: Store, record: NodeRecord | KeydRecord, ttl_s: int,
                 on_lost: Callable[[LeaseLost], None]) -> None:
        if ttl_s < 2:
            raise ValueError("lease TTL must be at least 2 s")
        self._store = store.clone()
        self.record = record
        self.ttl_s = ttl_s
        self.key = store.key_of(record)
        self.lease_id = 0
        self.lost = threading.Event()
        self._on_lost = on_lost
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._granted = 0.0

    def start(self) -> int:
        """Grant the lease, write the record on it, start keepalives; return the lease id."""
        self._granted = time.monotonic()
        self.lease_id = self._store.grant_lease(self.ttl_s)
        self._store.put(self.record, lease=self.lease_id)
        self._thread = threading.Thread(target=self._run, name=f"lease-{self.key}", daemon=True)
        self._thread.start()
        return self.lease_id

    def update(self, record: NodeRecord | KeydRecord) -> None:
        """Rewrite the record (e.g. state "draining") on the same lease."""
        if self._store.key_of(record) != self.key:
            raise ValueError("membership record cannot change its key")
        self._store.put(record, lease=self.lease_id)
        self.record = record

    def stop(self, revoke: bool = True) -> None:
        """Stop keepalives; with `revoke`, delete the record now rather than after the TTL."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.ttl_s + 5)
        if revoke and self.lease_id and not self.lost.is_set():
            try:
                self._store.revoke_lease(self.lease_id)
            except StoreError as exc:
                log.warning("could not revoke lease of %s: %s", self.key, exc)
        self._store.close()

    def _lose(self, reason: str) -> None:
        self.lost.set()
        log.error("lease of %s lost (%s): fencing", self.key, reason)
        try:
            self._on_lost(LeaseLost(self.lease_id, reason, self.key))
        except Exception as exc:
            log.error("lease-lost handler failed: %s", exc)

    def _run(self) -> None:
        interval = self.ttl_s / KEEPALIVES_PER_TTL
        # etcd expires the lease no earlier than TTL after it received our last keepalive,
        # so "sent + TTL" is a deadline the holder reaches first: it fences before etcd
        # hands its clients to another node. No keepalive may outlast that deadline (a
        # call hanging on a frozen or leaderless etcd would hold the fence back for the
        # store's whole timeout); after a failed one the next goes out RETRY_S later, to the
        # next etcd member (the failed one is skipped for a while): when the leader is
        # killed the cluster elects another within a second, well within a TTL.
        deadline = self._granted + self.ttl_s
        wait_s = min(interval, deadline - time.monotonic())
        while not self._stop.wait(max(0.0, wait_s)):
            sent = time.monotonic()
            if sent >= deadline:
                self._lose("unreachable")
                return
            try:
                ttl = self._store.keepalive(self.lease_id, timeout_s=deadline - sent)
            except StoreError as exc:
                log.warning("keepalive of %s failed: %s", self.key, exc)
                wait_s = min(RETRY_S, deadline - time.monotonic())
                continue
            if ttl <= 0:
                self._lose("expired")
                return
            deadline = sent + ttl
            wait_s = min(interval, deadline - time.monotonic())
