"""The Child SAs a node holds: installed into the data plane from sa/ (every SA is pre-loaded
on every node), each with the traffic policy it is bound to (policy/, cluster.node.policies),
and read on demand when a packet names an SPI not yet seen (the seed's connectivity query).
Control thread, but for the on-demand read (etcd pool).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from cluster.node.membership import StoreRef
from cluster.node.plane import DataPlane, SaRefused
from cluster.node.policies import PolicyBook
from cluster.store import ChildSaRecord, Policy

log = logging.getLogger("cluster.node")

FETCH_RETRY_S = 5.0  # an unknown SPI is read from etcd at most once per this period


class SaInstaller:
    """Installs SA records into `plane`; `records` is the ownership core's view of them."""

    def __init__(self, plane: DataPlane, records: dict[int, ChildSaRecord]) -> None:
        self.plane = plane
        self.records = records
        #: policy/ and the SAs bound to each policy (cluster.node.policies)
        self.policies = PolicyBook()
        self.fetches = 0  # on-demand reads of sa/<spi>
        self._fetched: dict[int, float] = {}

    def put(self, r: ChildSaRecord) -> bool:
        """Install (or update) the SA of `r`; False if the data plane cannot run it (the SA
        it had, if any, stays). The caller then tells the ownership core (`SaPut`)."""
        old = self.records.get(r.spi_in)
        moved = old is not None and old.ike_sa_id != r.ike_sa_id
        try:
            self.plane.install_sa(r, self.policies.filter_for(r), moved=moved)
        except SaRefused as e:  # a record the ESP core cannot run: skip, keep the old one
            log.error("cannot install SA %08x: %s", r.spi_in, e)
            return False
        self.policies.bind(r.spi_in, old, r)
        return True

    def deleted(self, spi: int) -> None:
        """sa/<spi> is gone (before the core hears `SaDeleted`: it still has the record)."""
        r = self.records.get(spi)
        if r is not None:
            self.policies.unbind(spi, r)
        self.plane.remove_sa(spi)

    # -- policy/ ------------------------------------------------------------------------------
    def policy_put(self, name: str, p: Policy) -> None:
        self.policies.put(name, p)
        self.policy_changed(name)

    def policy_malformed(self, name: str, reason: str) -> None:
        self.policies.malformed(name, reason)
        self.policy_changed(name)

    def policy_deleted(self, name: str) -> None:
        self.policies.delete(name)
        self.policy_changed(name)

    def policies_resynced(self, names: set[str]) -> None:
        self.policies.resynced(names)
        for name in self.policies.names_bound():  # snapshots give way to policy/
            self.policy_changed(name)

    def policy_changed(self, name: str) -> None:
        """Give every SA bound to policy `name` the filter it now runs."""
        spis = self.policies.bound(name)
        if spis:
            self.plane.set_policy(name, {spi: self.policies.filter_for(self.records[spi])
                                         for spi in spis})

    # -- on-demand reads ----------------------------------------------------------------------
    def fetch(self, spi: int, now: float, ref: StoreRef, pool: ThreadPoolExecutor,
              got: Callable[[ChildSaRecord], None]) -> None:
        """An unknown SPI arrived: read sa/<spi> once (per FETCH_RETRY_S); `got(record)` from
        the pool thread if it exists."""
        if spi in self.records or now - self._fetched.get(spi, -1e9) < FETCH_RETRY_S:
            return
        self._fetched[spi] = now
        if len(self._fetched) > 100_000:
            self._fetched = {s: t for s, t in self._fetched.items() if now - t < FETCH_RETRY_S}
        self.fetches += 1

        def read() -> None:
            try:
                v = ref.store.get(ChildSaRecord, spi)
            except Exception as e:
                log.info("on-demand read of sa/%08x failed: %s", spi, e)
                return
            if v is not None:
                got(v.record)
        pool.submit(read)
