"""The Child SAs a node holds: installed into the data plane from sa/ (every SA is pre-loaded
on every node), each with the traffic policy it is bound to (policy/, cluster.node.policies),
and read on demand when a packet names an SPI not yet seen (the seed's connectivity query).
Control thread, but for the on-demand read (a reader thread of its own) and `FetchGate`
(the data-path thread).

An on-demand read is only a shortcut: the sa/ watch delivers every record anyway, a few
milliseconds after keyd wrote it. So the reads are bounded (`FetchGate`: a rate and a
burst; at most `FETCH_IN_FLIGHT` at a time, on their own thread): a flood of made-up SPIs
must not become a flood of etcd reads, nor a backlog in the etcd pool that take-overs,
final records and re-registration wait behind. What is not read is counted
(`sa_fetches_shed_total`) and read at its next packet once the rate allows.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from cluster.node.membership import StoreRef
from cluster.node.plane import DataPlane, SaRefused
from cluster.node.policies import PolicyBook
from cluster.store import ChildSaRecord, Policy

log = logging.getLogger("cluster.node")

FETCH_RETRY_S = 5.0  # an unknown SPI is read from etcd at most once per this period
FETCH_RATE = 50.0  # on-demand reads per second, at most (sustained)
FETCH_BURST = 100  # ... and at most this many at once after a quiet spell
FETCH_IN_FLIGHT = 4  # on-demand reads queued or running at once


class FetchGate:
    """Which unknown SPIs get an on-demand read (data-path thread; pure: `now` is passed
    in): each SPI at most once per `retry_s`, and all of them together through a token
    bucket of `rate` per second with `burst` tokens. `shed` counts the SPIs turned away
    by the bucket (plain reads from other threads)."""

    def __init__(self, rate: float = FETCH_RATE, burst: int = FETCH_BURST,
                 retry_s: float = FETCH_RETRY_S) -> None:
        self.rate, self.burst, self.retry_s = rate, burst, retry_s
        self.shed = 0
        self._tokens = float(burst)
        self._at: float | None = None
        self._tried: dict[int, float] = {}

    def admit(self, spi: int, now: float) -> bool:
        if now - self._tried.get(spi, -1e18) < self.retry_s:
            return False  # read lately (it was not in etcd then): not a shed, a repeat
        if self._at is not None:
            self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1.0:
            self.shed += 1
            return False
        self._tokens -= 1.0
        self._tried[spi] = now
        if len(self._tried) > 4 * self.burst + self.rate * self.retry_s:
            self._tried = {s: t for s, t in self._tried.items() if now - t < self.retry_s}
        return True


class SaInstaller:
    """Installs SA records into `plane`; `records` is the ownership core's view of them."""

    def __init__(self, plane: DataPlane, records: dict[int, ChildSaRecord]) -> None:
        self.plane = plane
        self.records = records
        #: policy/ and the SAs bound to each policy (cluster.node.policies)
        self.policies = PolicyBook()
        self.fetches = 0  # on-demand reads of sa/<spi>
        self.gate = FetchGate()  # consulted by the data path before it asks for a read
        self.shed_in_flight = 0  # reads not started: FETCH_IN_FLIGHT were queued or running
        self._slots = threading.BoundedSemaphore(FETCH_IN_FLIGHT)
        self._reader: ThreadPoolExecutor | None = None

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
    @property
    def shed(self) -> int:
        """Unknown SPIs not read from etcd: over the rate, or with reads in flight."""
        return self.gate.shed + self.shed_in_flight

    def fetch(self, spi: int, ref: StoreRef, got: Callable[[ChildSaRecord], None]) -> None:
        """An unknown SPI the gate let through: read sa/<spi> (on the reader thread, at most
        FETCH_IN_FLIGHT at a time); `got(record)` from that thread if it exists."""
        if spi in self.records:
            return
        if not self._slots.acquire(blocking=False):
            self.shed_in_flight += 1
            return
        self.fetches += 1
        if self._reader is None:
            self._reader = ThreadPoolExecutor(1, thread_name_prefix="node-sa-read")

        def read() -> None:
            try:
                v = ref.store.get(ChildSaRecord, spi)
            except Exception as e:
                log.info("on-demand read of sa/%08x failed: %s", spi, e)
                return
            finally:
                self._slots.release()
            if v is not None:
                got(v.record)
        self._reader.submit(read)

    def stop(self) -> None:
        if self._reader is not None:
            self._reader.shutdown(wait=False, cancel_futures=True)
