"""The operator's redirect requests (`clusterctl client redirect`, RFC 5685 §5).

clusterctl writes `redirect/<ike-sa-id>` (cluster.store.RedirectRequest); every keyd
instance watches that prefix. One instance acts on a request: the one that holds the IKE SA
in memory or wrote it last; if that one is gone, the instance with the smallest id among
the live ones, which continues the IKE SA from etcd. It claims the request by deleting it
(compare-and-delete on its revision: two instances never both send), then sends the
INFORMATIONAL with REDIRECT once no step of its own is in flight. A client that never said
it can be redirected, or an IKE SA that is gone, is logged and the request dropped.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any

from cluster.store.client import Store
from cluster.store.errors import StoreError
from cluster.store.records import IkeSaRecord, RedirectRequest
from cluster.store.watch import RecordDeleted, RecordPut, WatchEvent

from .engine import Engine, Outbound
from .ike.errors import IkeUsageError

log = logging.getLogger("keyd.redirects")

BUSY_RETRY_S = 1.0   # an exchange of ours is in flight on the IKE SA: try again after this
BUSY_TRIES = 30


class Redirects:
    """Acts on redirect/ requests for one keyd instance (see the module docstring)."""

    def __init__(self, keyd_id: str, store: Store, engine: Callable[[], Engine],
                 peers: Callable[[], set[str]], quiet: Callable[[], bool],
                 send: Callable[[list[Outbound]], None],
                 call_in_loop: Callable[[Any], None]) -> None:
        self.keyd_id = keyd_id
        self.store = store
        self._engine = engine
        self._peers = peers
        self._quiet = quiet
        self._send = send
        self._call_in_loop = call_in_loop
        self._watcher: Any = None
        self._tasks: set[asyncio.Task[None]] = set()
        # requests another instance acts on, by IKE SA: looked at again when one goes away
        self._others: dict[str, tuple[RedirectRequest, int]] = {}

    def start(self, store: Store | None = None) -> None:
        if store is not None:
            self.store = store
        self._watcher = self.store.watch(RedirectRequest, self._on_event)

    def restart(self, store: Store) -> None:
        """A new watch on another connection to etcd (after an outage)."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.stop()
        self.start(store)

    def stop(self) -> None:
        """Stop the watch (blocking: from a worker thread)."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.stop()

    def cancel(self) -> None:
        """Drop the redirects waiting to be sent (on the loop's thread; their requests are
        claimed already: an operator repeats them)."""
        for task in list(self._tasks):
            task.cancel()

    def _on_event(self, event: WatchEvent) -> None:
        # watcher thread → the loop
        if isinstance(event, RecordPut) and isinstance(event.record, RedirectRequest):
            self._call_in_loop(functools.partial(self._take, event.record, event.revision))
        elif isinstance(event, RecordDeleted):
            self._call_in_loop(functools.partial(self._others.pop, event.name, None))

    def peers_changed(self) -> None:
        """Another instance registered or went away: the requests it would have acted on
        may be this one's now (on the loop's thread)."""
        for request, revision in list(self._others.values()):
            self._take(request, revision)

    def _mine(self, request: RedirectRequest) -> bool:
        """Whether this instance acts on the request."""
        if self._engine().core.has_ike_sa(request.ike_sa_id):
            return True
        try:
            held = self.store.get(IkeSaRecord, request.ike_sa_id)
        except StoreError:
            return False   # etcd away: the request waits in etcd; a resync brings it back
        writer = held.record.keyd_id if held is not None else None
        if writer == self.keyd_id:
            return True
        live = self._peers() | {self.keyd_id}
        return (writer is None or writer not in live) and self.keyd_id == min(live)

    def _take(self, request: RedirectRequest, revision: int) -> None:
        if not self._mine(request):
            self._others[request.ike_sa_id] = (request, revision)
            return
        self._others.pop(request.ike_sa_id, None)
        task = asyncio.create_task(self._redirect(request, revision))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _redirect(self, request: RedirectRequest, revision: int) -> None:
        ike_sa_id, gateway = request.ike_sa_id, request.gateway
        try:
            claimed = await asyncio.to_thread(self.store.delete_if, RedirectRequest,
                                              ike_sa_id, revision)
        except StoreError as exc:
            log.warning("redirect request not taken: etcd does not answer",
                        extra={"ike_sa": ike_sa_id, "error": str(exc)})
            return
        if not claimed:
            return   # another instance took it, or the operator replaced it
        for _ in range(BUSY_TRIES):
            while not self._quiet():
                await asyncio.sleep(0.01)
            try:
                out = self._engine().redirect(ike_sa_id, gateway)
            except IkeUsageError as exc:
                if "in flight" in str(exc):
                    await asyncio.sleep(BUSY_RETRY_S)
                    continue
                log.warning("client not redirected", extra={
                    "ike_sa": ike_sa_id, "gateway": gateway, "reason": str(exc)})
                return
            except StoreError as exc:
                log.warning("client not redirected: etcd does not answer",
                            extra={"ike_sa": ike_sa_id, "error": str(exc)})
                return
            if out is None:
                log.warning("client not redirected: no such IKE SA",
                            extra={"ike_sa": ike_sa_id, "gateway": gateway})
                return
            if not out:
                log.warning("client not redirected: its state was not written",
                            extra={"ike_sa": ike_sa_id, "gateway": gateway})
                return
            self._send(out)
            log.info("client asked to move", extra={"ike_sa": ike_sa_id, "gateway": gateway})
            return
        log.warning("client not redirected: an exchange stayed in flight",
                    extra={"ike_sa": ike_sa_id, "gateway": gateway})
