"""Fan events out to every target, each on its own worker with its own bounded queue.

One worker thread per target (per executable, per webhook URL), so a slow or failing hook only
delays itself. A worker tries an event up to 1 + retries times with exponential back-off, then
gives up, logs it and counts it. A full queue drops the event for that target only, logged and
counted. Either way the delivery is finished for the ledger, so one broken hook cannot hold
back the saved revision forever.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Counter, Gauge

from cluster.hooks.event import HookEvent
from cluster.hooks.ledger import DeliveryLedger
from cluster.hooks.targets import Outcome, ProcessTarget, Target, WebhookTarget, scan_directory

log = logging.getLogger("cluster.hooks")

DELIVERIES = Counter("cluster_hooks_deliveries_total",
                     "Finished deliveries by target and result (ok, failed, timeout)",
                     ["target", "result"])
ATTEMPTS_FAILED = Counter("cluster_hooks_attempts_failed_total",
                          "Failed delivery attempts (each retry counts)", ["target"])
DROPPED = Counter("cluster_hooks_dropped_total",
                  "Events dropped because a target's queue was full", ["target"])
QUEUE_DEPTH = Gauge("cluster_hooks_queue_depth", "Events waiting per target", ["target"])
EVENTS = Counter("cluster_hooks_events_total", "Events derived from the keyspace", ["event"])


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retries: int = 3
    """Attempts after the first one."""
    backoff_s: float = 1.0
    """Wait before the first retry; doubles each time."""
    backoff_max_s: float = 30.0

    def delay_s(self, attempt: int) -> float:
        """The wait before retry number `attempt` (1-based)."""
        return min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1))


class Worker:
    """Delivers one target's events in order, on its own thread."""

    def __init__(self, target: Target, policy: RetryPolicy, queue_size: int) -> None:
        self.target = target
        self.policy = policy
        self.queue: queue.Queue[tuple[HookEvent, DeliveryLedger] | None] = queue.Queue(
            maxsize=queue_size)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=target.name, daemon=True)
        self.thread.start()

    def offer(self, event: HookEvent, ledger: DeliveryLedger) -> bool:
        """Queue an event (finished on `ledger`); False, nothing queued, when the queue is full."""
        try:
            self.queue.put_nowait((event, ledger))
        except queue.Full:
            return False
        QUEUE_DEPTH.labels(self.target.name).set(self.queue.qsize())
        return True

    def stop(self) -> None:
        """Finish the event in hand, then stop (queued events stay undelivered)."""
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self.queue.put_nowait(None)

    def _run(self) -> None:
        while not self._stop.is_set():
            item = self.queue.get()
            if item is None:
                break
            event, ledger = item
            QUEUE_DEPTH.labels(self.target.name).set(self.queue.qsize())
            try:
                self._deliver(event)
            except _Stopped:
                # Left pending in the ledger: the saved revision stays before this event,
                # so the next run delivers it again.
                return
            except Exception:  # a bug in a target must not kill the worker
                log.exception("hook %s: unexpected error on %s", self.target.name, event.event)
            ledger.finish(event.revision)

    def _deliver(self, event: HookEvent) -> None:
        outcome = Outcome(False, "not attempted")
        for attempt in range(self.policy.retries + 1):
            if attempt and self._stop.wait(self.policy.delay_s(attempt)):
                raise _Stopped
            outcome = self.target.deliver(event)
            if outcome.ok:
                DELIVERIES.labels(self.target.name, "ok").inc()
                log.info("hook %s: %s rev %d delivered (%s)", self.target.name, event.event,
                         event.revision, outcome.detail)
                return
            ATTEMPTS_FAILED.labels(self.target.name).inc()
            log.warning("hook %s: %s rev %d attempt %d/%d failed: %s", self.target.name,
                        event.event, event.revision, attempt + 1, self.policy.retries + 1,
                        outcome.detail)
            if not outcome.retry:
                break
        DELIVERIES.labels(self.target.name, "timeout" if outcome.timed_out else "failed").inc()
        log.error("hook %s: gave up on %s rev %d: %s", self.target.name, event.event,
                  event.revision, outcome.detail)


class _Stopped(Exception):
    """The worker was stopped while waiting to retry."""


class Dispatcher:
    """Routes each event to every current target. The hooks directory is read per event, so
    adding or removing a hook needs no restart."""

    def __init__(self, directory: Path | None, webhooks: Sequence[str], timeout_s: float,
                 policy: RetryPolicy, queue_size: int,
                 base_env: Callable[[], dict[str, str]] | None = None) -> None:
        self.directory = directory
        self.webhooks = list(webhooks)
        self.timeout_s = timeout_s
        self.policy = policy
        self.queue_size = queue_size
        self.base_env = base_env
        self.workers: dict[str, Worker] = {}

    def _targets(self) -> list[Worker]:
        wanted: list[tuple[str, Callable[[], Target]]] = []
        if self.directory is not None:
            for path in scan_directory(self.directory):
                wanted.append((f"exec:{path}", lambda p=path: ProcessTarget(  # type: ignore[misc]
                    p, self.timeout_s, self.base_env)))
        for url in self.webhooks:
            wanted.append((f"webhook:{url}", lambda u=url: WebhookTarget(  # type: ignore[misc]
                u, self.timeout_s)))
        out = []
        for key, make in wanted:
            worker = self.workers.get(key)
            if worker is None:
                worker = self.workers[key] = Worker(make(), self.policy, self.queue_size)
            out.append(worker)
        return out

    def dispatch(self, event: HookEvent, ledger: DeliveryLedger) -> None:
        """Queue `event` for every target; each delivery is counted on `ledger`."""
        EVENTS.labels(event.event).inc()
        workers = self._targets()
        if not workers:
            log.debug("no hooks for %s rev %d", event.event, event.revision)
        for worker in workers:
            ledger.add(event.revision)
            if not worker.offer(event, ledger):
                ledger.finish(event.revision)
                DROPPED.labels(worker.target.name).inc()
                log.error("hook %s: queue full (%d): dropped %s rev %d", worker.target.name,
                          self.queue_size, event.event, event.revision)

    def drain(self, ledgers: Sequence[DeliveryLedger], timeout_s: float) -> bool:
        """Wait until nothing is in flight; False if time ran out."""
        deadline = time.monotonic() + timeout_s
        while any(ledger.in_flight for ledger in ledgers):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self) -> None:
        """Stop every worker; what is still queued stays pending in the ledger."""
        for worker in self.workers.values():
            worker.stop()
        for worker in self.workers.values():
            worker.thread.join(timeout=self.timeout_s + 2)
