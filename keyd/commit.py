"""Group commit: the steps waiting for their write, written together, then released.

A step runs the core at once; what it must write waits here, and every step waiting is
written in shared transactions (`Persister.write_batch`) once the loop has read whatever else
waits in the sockets; each step's replies are released when its write is done. Until then,
further messages for the IKE SAs the step changed are held here (in order), so each IKE SA
has at most one step in flight. Everything runs on the event loop's own thread.

Half-open IKE SAs (docs/keyd.md, "Half-open IKE SAs") are written from
HALF_OPEN_WRITE_DELAY_S after their IKE_SA_INIT answer on, riding with the next write keyd
makes anyway — unless their IKE_AUTH comes first and writes them whole. Removals of answered
DELETEs wait for a ride the same way (RIDE_WAIT_S).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from cluster.store.errors import StoreError

from .engine import Engine
from .metrics import KeydMetrics
from .step import Outbound, Step
from .udp import Inbound

log = logging.getLogger("keyd")

#: steps written together at most (each transaction stays under etcd's 128 operations)
COMMIT_BATCH_MAX = 64
#: a group commit waits for datagrams still arriving at most this long: under a flood the
#: sockets are never empty, and a write that waited for that would never go out
COMMIT_GATHER_MAX_S = 0.005
#: a half-open IKE SA is written from this long after its IKE_SA_INIT answer on — unless
#: its IKE_AUTH reaches this instance first: then the IKE_AUTH step writes it whole, in one
#: round trip instead of two (docs/keyd.md, "Half-open IKE SAs")
HALF_OPEN_WRITE_DELAY_S = 0.05
#: ... with the next write keyd makes anyway, or on its own this much later
HALF_OPEN_RIDE_MAX_S = 0.2
#: removals of answered DELETEs, and owners of removed IKE SAs, ride with the next write;
#: if none comes, they go on their own this much later
RIDE_WAIT_S = 0.05


@dataclass(slots=True)
class _Held:
    """An IKE SA with steps in flight: how many, and the messages that wait for them."""

    steps: int = 0
    waiting: list[Inbound] = field(default_factory=list)


class GroupCommit:
    """The committer of one keyd instance. `engine` is the instance's engine (once started),
    `send` puts replies on the wire, `resume` hands a message that waited for a step back to
    the instance (after the step is settled). `loop` is set when the instance starts."""

    def __init__(self, engine: Callable[[], Engine], metrics: KeydMetrics,
                 send: Callable[[list[Outbound]], None],
                 resume: Callable[[Inbound], None]) -> None:
        self._engine = engine
        self.metrics = metrics
        self._send = send
        self._resume = resume
        self.loop: asyncio.AbstractEventLoop | None = None
        self.arrivals = 0                  # datagrams received so far
        self._pending: list[Step] = []
        self._scheduled = False
        self._gather_since = 0.0           # loop time the waiting write was scheduled at
        self._removals_timer: asyncio.TimerHandle | None = None
        self._held: dict[str, _Held] = {}
        self._half_open: dict[str, asyncio.TimerHandle] = {}   # IKE SA → its write, later
        self._riding: dict[str, Step] = {}   # half-open IKE SA → its write, with the next
        self._riding_timer: asyncio.TimerHandle | None = None

    @property
    def engine(self) -> Engine:
        return self._engine()

    @property
    def quiet(self) -> bool:
        """No step in flight: the timers and the flush may touch any IKE SA."""
        return not self._held and not self._pending

    def busy(self) -> set[str]:
        """The IKE SAs with a step in flight."""
        return set(self._held)

    def hold(self, ike_sa_id: str, inbound: Inbound) -> bool:
        """If `ike_sa_id` has a step in flight, the message waits for it: True."""
        held = self._held.get(ike_sa_id)
        if held is None:
            return False
        held.waiting.append(inbound)
        return True

    def take(self, step: Step) -> None:
        """A step whose replies that may leave now are sent: its writes wait here."""
        # a half-open IKE SA whose state this step writes anew (or removed) needs no write
        # of its own any more
        for ike_sa_id in (*step.changes.ike_puts, *step.changes.deleted_ike):
            later = self._half_open.pop(ike_sa_id, None)
            if later is not None:
                later.cancel()
            self._riding.pop(ike_sa_id, None)
        if step.half_open and self.loop is not None:
            # written a moment later, unless its IKE_AUTH (which writes it whole) comes first
            handle = self.loop.call_later(HALF_OPEN_WRITE_DELAY_S, self._write_half_open, step)
            for ike_sa_id in step.created:
                self._half_open[ike_sa_id] = handle
        elif step.needs_write:
            self._submit(step)
        self.removals_later()

    def _write_half_open(self, step: Step) -> None:
        """The half-open IKE SA's IKE_AUTH has not come: write it with the next write keyd
        makes anyway, or on its own by HALF_OPEN_RIDE_MAX_S."""
        self.engine.complete(step)
        for ike_sa_id in step.created:
            self._half_open.pop(ike_sa_id, None)
            self._riding[ike_sa_id] = step
        if self._scheduled:
            return
        if self._riding_timer is None and self.loop is not None:
            self._riding_timer = self.loop.call_later(HALF_OPEN_RIDE_MAX_S,
                                                      self._write_riding)

    def _write_riding(self) -> None:
        self._riding_timer = None
        if self._riding:
            self._schedule()

    def _take_riding(self) -> None:
        """Half-open IKE SAs waiting for a write join the one being made."""
        if not self._riding:
            return
        steps = {id(s): s for s in self._riding.values()}
        self._riding.clear()
        for step in steps.values():
            if any(self.engine.core.has_ike_sa(i) for i in step.created):
                self._queue(step)

    def _queue(self, step: Step) -> None:
        """The step waits for the next write; messages for its IKE SAs wait for the step."""
        for ike_sa_id in step.holds():
            held = self._held.get(ike_sa_id)
            if held is None:
                held = self._held[ike_sa_id] = _Held()
            held.steps += 1
        self._pending.append(step)

    def _submit(self, step: Step) -> None:
        self._queue(step)
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled and self.loop is not None:
            self._scheduled = True
            self._gather_since = self.loop.time()
            self.loop.call_soon(self._commit, self.arrivals)

    def _commit(self, seen: int) -> None:
        """Group commit, on the loop's thread (no hand-over to another thread and back):
        while datagrams keep arriving, let the loop read them (each may add a step), then
        write every waiting step at once and release their replies. The wait is bounded
        (COMMIT_GATHER_MAX_S): datagrams that keep coming do not hold a write back."""
        assert self.loop is not None
        if self.arrivals != seen and len(self._pending) < COMMIT_BATCH_MAX and \
                self.loop.time() - self._gather_since < COMMIT_GATHER_MAX_S:
            self.loop.call_soon(self._commit, self.arrivals)
            return
        self._scheduled = False
        self._take_riding()
        batch, self._pending = self._pending[:COMMIT_BATCH_MAX], self._pending[COMMIT_BATCH_MAX:]
        if not batch:
            return
        persister = self.engine.persister
        self.metrics.commit_steps.observe(len(batch))
        try:
            results = persister.write_batch([s.changes for s in batch])
        except Exception as exc:   # not etcd's: the steps are not durable either
            log.error("write failed", extra={"error": f"{type(exc).__name__}: {exc}"})
            results = [StoreError(str(exc))] * len(batch)
        for step, error in zip(batch, results, strict=True):
            try:
                self._send(self.engine.settle(step, error))
            except Exception as exc:
                log.error("step not settled", extra={"error": f"{type(exc).__name__}: {exc}"})
            self._release(step)
        if self._pending:
            self._schedule()
        self.removals_later()

    def removals_later(self) -> None:
        """Removals (and owners of removed IKE SAs) wait for the next write; make sure one
        comes."""
        if self._removals_timer is None and self.loop is not None and \
                self.engine.persister.removals_due:
            self._removals_timer = self.loop.call_later(RIDE_WAIT_S, self._flush_removals)

    def _flush_removals(self) -> None:
        """Removals waited for a write that did not come: write them on their own."""
        self._removals_timer = None
        persister = self.engine.persister
        if self._scheduled or not persister.removals_due:
            return   # the next write takes them along
        if not self.engine.etcd_ok:
            return   # the etcd probe writes them when etcd answers again
        try:
            persister.flush_removals()
        except StoreError:
            return   # kept for the etcd probe
        except Exception as exc:
            log.error("removal failed", extra={"error": f"{type(exc).__name__}: {exc}"})
            return
        self.removals_later()   # their owners, in a later revision

    def _release(self, step: Step) -> None:
        """The step is settled: messages that waited for its IKE SAs go on, in order."""
        for ike_sa_id in step.holds():
            held = self._held.get(ike_sa_id)
            if held is None:
                continue
            held.steps -= 1
            if held.steps > 0:
                continue
            del self._held[ike_sa_id]
            for inbound in held.waiting:
                self._resume(inbound)

    def stop(self) -> None:
        """Shutting down: no ride for removals any more (the server writes them itself)."""
        if self._removals_timer is not None:
            self._removals_timer.cancel()
