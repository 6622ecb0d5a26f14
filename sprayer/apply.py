"""Appliers: one `Targets` (what the view says) → one driver's configuration.

Every applier has `apply(targets)` (idempotent; cheap when nothing changed), `resync()`
(forget what was applied, so the next apply rewrites everything atomically — after a
takeover, or a failed batch) and `close()`.
"""

from __future__ import annotations

from typing import Protocol

from sprayer.backends import MarkAllocator, backend_marks, keyd_backends
from sprayer.haproxy import DesiredServer, HAProxyDriver, HAProxyRuntime
from sprayer.keyd import keyd_bucket_marks, keyd_for
from sprayer.nft import NftDriver, SpiMapCheck
from sprayer.routes import RouteDriver
from sprayer.view import Targets


class Applier(Protocol):
    def apply(self, targets: Targets) -> None: ...
    def resync(self) -> None: ...
    def close(self) -> None: ...
    def map_check(self) -> SpiMapCheck | None: ...


class KernelApplier:
    """nftables table + policy routes + client /32 routes (the fast path).

    `keyd` is the configured seed: IKE goes to the live keyd instances of `Targets.keyd`, and
    to the seed only while none is registered."""

    def __init__(self, vip: str, keyd: list[str], *, netns: str | None = None,
                 table: str = "ipsec_cluster") -> None:
        self.marks = MarkAllocator()
        self.seed = keyd_backends(keyd)
        self.keyd = self.seed
        self.nft = NftDriver(vip, table=table, netns=netns)
        self.routes = RouteDriver(vip, netns=netns)

    def apply(self, targets: Targets) -> None:
        self.keyd = keyd_for(targets, self.seed)
        self.routes.sync_backends(backend_marks(self.marks, self.keyd, targets.nodes))
        self.nft.install(keyd_bucket_marks(self.marks, self.keyd),
                         [self.marks.mark(n) for n in targets.fallback])
        self.nft.sync_spis({spi: self.marks.mark(n) for spi, n in targets.spis.items()})
        self.routes.sync_clients(targets.client_routes())

    def map_check(self) -> SpiMapCheck | None:
        """A comparison of the kernel's SPI map with what was applied (sprayer.mapcheck)."""
        return self.nft.check()

    def resync(self) -> None:
        self.nft.close()
        self.nft = NftDriver(self.nft.vip, table=self.nft.table, netns=self.nft.netns,
                             nft=self.nft.nft)
        self.routes = RouteDriver(self.routes.vip, netns=self.routes.netns)

    def close(self) -> None:
        """Leave the table and routes in place: the kernel keeps forwarding with the last map
        while a standby takes over (DESIGN.md); `remove()` is for operators and tests."""

    def remove(self) -> None:
        self.nft.remove()
        self.routes.remove()


class HAProxyApplier:
    """Node membership, drain and weights → an HAProxy backend (TCP only)."""

    def __init__(self, socket_path: str, backend: str, port: int = 4500) -> None:
        self.driver = HAProxyDriver(HAProxyRuntime(socket_path), backend)
        self.port = port
        self._last: dict[str, DesiredServer] | None = None

    def apply(self, targets: Targets) -> None:
        desired = {n: DesiredServer(n, targets.nodes[n], self.port, cap,
                                    drain=draining or n not in targets.fallback)
                   for n, (cap, draining) in targets.weights.items()}
        if desired != self._last:
            self.driver.sync(desired)
            self._last = desired

    def resync(self) -> None:
        self._last = None

    def map_check(self) -> SpiMapCheck | None:
        return None    # no SPI map: HAProxy balances by its own state

    def close(self) -> None:
        pass
