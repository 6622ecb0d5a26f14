"""The client routes a node writes (rtnetlink, cluster.node.tun), on a thread of their own.

The ownership core decides them (cluster.node.ownership: `Route`, `AnnounceWhenRouted`);
this applies them in the order they were decided (one thread: no reordering of an add and a
delete of the same address), everything queued so far in one rtnetlink batch.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable

from cluster.node import tun as tunmod
from cluster.node.events import Route
from cluster.node.ownership import HOLD_S
from cluster.node.plane import DataPlane

log = logging.getLogger("cluster.node")

#: a queued route change, or a marker: call `on_in_place(ike_sa_id)` once all before it apply
_Item = tunmod.RouteChange | str


class RouteApplier:
    """`on_in_place(k)`: the routes queued before `announce(k)` are applied;
    `on_rerouted(addr)`: a `via` route applied and what was held for `addr` re-injected."""

    def __init__(self, tun: str, plane: DataPlane, on_in_place: Callable[[str], None],
                 on_rerouted: Callable[[bytes], None]) -> None:
        self.tun = tun
        self.plane = plane
        self.on_in_place = on_in_place
        self.on_rerouted = on_rerouted
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="node-routes", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(5)

    def route(self, r: Route) -> None:
        self._queue.put(tunmod.RouteChange(r.action, r.address, r.via))

    def announce(self, ike_sa_id: str) -> None:
        self._queue.put(ike_sa_id)

    def _loop(self) -> None:
        try:
            writer: tunmod.RouteWriter | None = tunmod.RouteWriter(self.tun)
        except tunmod.TunError as e:
            log.error("client routes cannot be written: %s", e)
            writer = None
        try:
            while True:
                item = self._queue.get()
                items = [item]
                while item is not None:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    items.append(item)
                batch: list[tunmod.RouteChange] = []
                for it in items:
                    if it is None:
                        self._apply(writer, batch)
                        return
                    if isinstance(it, str):  # every route queued before it is applied
                        self._apply(writer, batch)
                        batch = []
                        self.on_in_place(it)
                    else:
                        batch.append(it)
                self._apply(writer, batch)
        finally:
            if writer is not None:
                writer.close()

    def _apply(self, writer: tunmod.RouteWriter | None,
               batch: list[tunmod.RouteChange]) -> None:
        if not batch:
            return
        if writer is None:
            log.error("%d client route changes not applied: no rtnetlink socket", len(batch))
        else:
            try:
                failures = writer.apply(batch)
            except tunmod.TunError as e:
                failures = [str(e)]
            for text in failures[:5]:
                log.error("%s", text)
            if len(failures) > 5:
                log.error("... and %d more route changes refused", len(failures) - 5)
        for change in batch:
            if change.action == "via":
                # what arrived before the route changed goes to the new owner too; what is
                # still on its way into the TUN is held and re-injected once more (LATE_S)
                self.plane.reinject({change.address}, HOLD_S)
                self.on_rerouted(change.address)


def remove_routes(tun: str, routed: Iterable[bytes],
                  forwarded: Iterable[tuple[bytes, str]]) -> None:
    """At stop: the routes this node still holds, to its TUN and via other nodes."""
    changes = [tunmod.RouteChange("del", addr) for addr in routed]
    changes += [tunmod.RouteChange("unvia", addr, via) for addr, via in forwarded]
    try:
        for text in tunmod.apply_routes(changes, tun)[:5]:
            log.warning("%s", text)
    except tunmod.TunError as e:
        log.warning("client routes left behind: %s", e)
