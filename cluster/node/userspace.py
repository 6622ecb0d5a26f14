"""The userspace data plane (cluster.node.datapath: UDP ⇄ cluster.esp ⇄ TUN) as a
`DataPlane` (cluster.node.plane): every call is handed to the data-path thread, which owns
every SA object, in the order made (`Datapath.call`); those that answer wait for it
(`Datapath.run`)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable

from cluster.esp import IvSource, SaCounters
from cluster.node.counters import Traffic, merge_window
from cluster.node.datapath import Datapath
from cluster.node.events import SaStart
from cluster.node.metrics import Snapshot
from cluster.node.mobility import peer_after_update
from cluster.node.plane import Addresses, SaRefused
from cluster.node.sa import NodeSa
from cluster.policy import PacketFilter
from cluster.store import ChildSaRecord

log = logging.getLogger("cluster.node")


class UserspacePlane:
    def __init__(self, dp: Datapath, iv_source: IvSource, replay_window: int) -> None:
        self.dp = dp
        self.iv_source = iv_source
        self.replay_window = replay_window

    # -- SAs --------------------------------------------------------------------------------
    def install_sa(self, record: ChildSaRecord, policy: PacketFilter | None, *,
                   moved: bool) -> None:
        try:
            sa = NodeSa(record, self.replay_window, self.iv_source, policy)
        except Exception as e:  # a record the ESP core cannot run
            raise SaRefused(str(e)) from None
        dp = self.dp

        def install() -> None:
            prev = dp.table.get(record.spi_in)
            if prev is not None:  # an update: the SA's sequence state carries over
                sa.restore(prev.counters())
                sa.traffic_base = prev.traffic()
                sa.send_limit = 0 if moved else prev.send_limit
                # MOBIKE moves by the record, NAT rebinding by what ESP followed
                sa.peer = peer_after_update(prev.peer, prev.record, record)
            dp.install(sa)
            if sa.send_limit:
                dp.send_on(sa)
        dp.call(install)

    def remove_sa(self, spi: int) -> None:
        dp = self.dp

        def remove() -> None:
            dp.remove(spi)
        dp.call(remove)

    def set_policy(self, name: str, filters: dict[int, PacketFilter | None]) -> None:
        dp = self.dp

        def apply() -> None:
            for spi, f in filters.items():
                sa = dp.table.get(spi)
                if sa is not None and sa.record.policy == name:
                    sa.policy = f
        dp.call(apply)

    # -- sending ----------------------------------------------------------------------------
    def install_counters(self, starts: dict[int, SaStart]) -> dict[int, SaCounters]:
        dp = self.dp
        window = self.replay_window

        def apply() -> dict[int, SaCounters]:
            started = {}
            for spi, st in starts.items():
                sa = dp.table.get(spi)
                if sa is None:
                    continue
                start = merge_window(sa.counters(), st.take_over.counters, window)
                sa.restore(start)
                # the record's traffic is the SA's life so far; this node counts on from it
                sa.traffic_base = st.carried - sa.local_traffic()
                started[spi] = start
            return started
        return dp.run(apply)

    def send_on(self, limits: dict[int, int]) -> None:
        dp = self.dp

        def enable() -> None:
            for spi, limit in limits.items():
                sa = dp.table.get(spi)
                if sa is not None:
                    sa.send_limit = limit
                    dp.send_on(sa)
        dp.run(enable)

    def raise_send_limits(self, limits: dict[int, int]) -> None:
        dp = self.dp

        def raise_limits() -> None:
            for spi, limit in limits.items():
                sa = dp.table.get(spi)
                if sa is not None and sa.send_limit:
                    sa.send_limit = limit
                    if dp.holds.held:
                        dp.flush(sa)  # packets held at the take-over's limit go out now
        dp.call(raise_limits)

    def stop_sending(self, spis: frozenset[int]) -> None:
        dp = self.dp

        def fence() -> None:
            for spi in spis:
                sa = dp.table.get(spi)
                if sa is not None:
                    dp.stop_sending(sa)
        dp.run(fence)

    def fence_all(self) -> None:
        self.dp.run(self.dp.fence_all)

    def set_detached(self, detached: bool) -> None:
        dp = self.dp

        def detach() -> None:
            dp.detached = detached
        dp.run(detach)

    # -- held traffic -------------------------------------------------------------------------
    def hold(self, addresses: Addresses, for_s: float) -> None:
        self.dp.call(functools.partial(self.dp.hold, set(addresses), for_s))

    def release(self, addresses: Addresses) -> None:
        self.dp.call(functools.partial(self.dp.release, set(addresses)))

    def reinject(self, addresses: Addresses, hold_s: float = 0.0) -> None:
        self.dp.call(functools.partial(_reinject, self.dp, set(addresses), hold_s))

    # -- counters ---------------------------------------------------------------------------
    def counters(self, spis: Iterable[int]) -> dict[int, tuple[SaCounters, Traffic]]:
        dp = self.dp
        wanted = set(spis)
        return dp.run(lambda: {s: (sa.counters(), sa.traffic()) for s in wanted
                               if (sa := dp.table.get(s)) is not None})

    def moved_counters(self, marks: dict[int, tuple[int, int, int]],
                       forced: set[int]) -> dict[int, tuple[SaCounters, Traffic]]:
        dp = self.dp

        def moved() -> dict[int, tuple[SaCounters, Traffic]]:
            # only SAs that moved since their acknowledged checkpoint (or must be written)
            get = dp.table.by_spi.get
            return {s: (sa.counters(), sa.traffic()) for s, mark in list(marks.items())
                    if (sa := get(s)) is not None
                    and (s in forced
                         or mark != (sa.out_seq, sa.window.highest, sa.window.bitmap))}
        return dp.run(moved)

    def after_pending(self, fn: Callable[[], None]) -> None:
        self.dp.call(fn)

    def renew_iv_prefix(self, prefix: bytes) -> None:
        """A fresh IV prefix for every SA from now on (cluster.esp.nonce)."""
        source = self.iv_source
        self.dp.call(lambda: source.renew(prefix))


def fill_snapshot(plane: UserspacePlane, s: Snapshot, owned: set[int],
                  lag: Callable[[int, SaCounters], int]) -> None:
    """The data plane's part of the node's metrics (any thread: plain reads)."""
    dp = plane.dp
    t = dp.io_totals()
    s.packets_in, s.bytes_in, s.packets_out, s.bytes_out = (
        t.packets_in, t.bytes_in, t.packets_out, t.bytes_out)
    drops: dict[str, int] = {}
    for counter in (dp.table.drops, dp.drops):
        for reason, n in list(counter.items()):
            drops[reason.value] = drops.get(reason.value, 0) + n
    s.drops = drops
    s.sas_installed = len(dp.table)
    s.sas_owned = len(owned)
    s.checkpoint_lag_packets = max([0, *(lag(sa.spi_in, sa.counters()) for sa in dp.sas()
                                         if sa.spi_in in owned)])
    s.rebinds, s.coalesced, s.health_probes = t.rebinds, t.coalesced, t.health_probes
    s.policy_drops = dict(dp.policy_drops)


def _reinject(dp: Datapath, addrs: set[bytes], hold_s: float = 0.0) -> None:
    """Give what was held for `addrs` back to the kernel (now routed to the new owner); with
    `hold_s`, keep holding what still arrives (it was routed here before the route changed
    and sits in the TUN queue) until the next reinject."""
    n = dp.reinject(addrs)
    if hold_s:
        dp.hold(addrs, hold_s)
    if n:
        log.debug("%d held packet(s) for %s forwarded to the new owner", n,
                  ", ".join(a.hex() for a in addrs))
