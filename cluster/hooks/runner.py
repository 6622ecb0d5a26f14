"""`cluster-hooks`: the daemon that turns keyspace changes into hook runs and webhook POSTs.

Delivery is at-least-once across restarts: the runner saves the highest revision whose events
every target has finished, and resumes the watch after it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from prometheus_client import Gauge

from cluster.config import ConfigError
from cluster.hooks.dispatch import Dispatcher, RetryPolicy
from cluster.hooks.event import HookEvent
from cluster.hooks.feed import ClusterFeed
from cluster.hooks.ledger import DeliveryLedger, RevisionFile
from cluster.hooks.snapshot import SnapshotFile
from cluster.store.client import Store
from cluster.store.errors import FutureRevision

log = logging.getLogger("cluster.hooks")

DELIVERED_REVISION = Gauge("cluster_hooks_delivered_revision",
                           "Highest etcd revision whose events every target has finished")

SAVE_INTERVAL_S = 0.2
SNAPSHOT_INTERVAL_S = 30.0
SHUTDOWN_DRAIN_S = 5.0


@dataclass(frozen=True, slots=True)
class HooksSettings:
    """The [hooks] section of docs/configuration.md (plus the back-off of retries)."""

    directory: Path | None = Path("/etc/ipsec-cluster/hooks.d")
    webhooks: list[str] = field(default_factory=list)
    timeout_s: float = 10.0
    retries: int = 3
    backoff_s: float = 1.0
    queue_size: int = 1000
    state_file: Path = Path("/var/lib/ipsec-cluster/hooks.revision")

    def __post_init__(self) -> None:
        """ConfigError for what no flag or file may say: a time-out or back-off of nan or
        inf (argparse's float reads both), a webhook that is not an http(s) URL."""
        for name in ("timeout_s", "backoff_s"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise ConfigError(f"[hooks] {name} must be a finite number of seconds, "
                                  f"not {value}")
        for url in self.webhooks:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"[hooks] webhook {url!r} is not an http(s)://host/... URL")


class HookRunner:
    """Feed → dispatcher → targets, with progress saved to the revision file."""

    def __init__(self, store: Store, settings: HooksSettings) -> None:
        self.store = store
        self.settings = settings
        self.revision_file = RevisionFile(settings.state_file)
        self.snapshot_file = SnapshotFile(settings.state_file.with_name(
            settings.state_file.name + ".snapshot"))
        self._snapshot_at = 0.0
        self.dispatcher = Dispatcher(
            settings.directory, settings.webhooks, settings.timeout_s,
            RetryPolicy(settings.retries, settings.backoff_s), settings.queue_size)
        self.ledger = DeliveryLedger()
        self.feed = ClusterFeed(store, self._on_events, self.ledger.observe)
        self.saved: int | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        """Resume after the saved revision (or start from now), and save where it starts."""
        directory = self.settings.directory
        if directory is not None and not directory.is_dir():
            log.warning("hooks directory %s does not exist (yet): no hook runs until it does",
                        directory)
        saved = self.revision_file.load()
        if saved is None:
            log.info("no saved revision in %s: starting from now", self.revision_file.path)
        try:
            started = self.feed.start(saved, self.snapshot_file.load)
        except FutureRevision:
            # etcd is behind what was delivered: restored from a backup or replaced. Waiting
            # would resume, some day, after changes that have nothing to do with that number.
            raise ValueError(
                f"revision file {self.revision_file.path} holds {saved}, but etcd has not "
                "reached that revision (restored or replaced?): remove the file to start "
                "from now") from None
        self.ledger.observe(started)
        self.save()
        log.info("watching %s after revision %d", self.store.keyspace.root, started)

    def _on_events(self, events: list[HookEvent]) -> None:
        for event in events:
            log.info("event %s rev %d client=%s node=%s", event.event, event.revision,
                     event.client_id or event.ike_sa_id or "-", event.node or "-")
            self.dispatcher.dispatch(event, self.ledger)

    @property
    def committed(self) -> int:
        return self.ledger.committed

    def save(self, snapshot: bool = False) -> None:
        """Persist the committed revision if it moved; every SNAPSHOT_INTERVAL_S (or when
        asked) also the deriver's state, if nothing is in flight."""
        now = self.ledger.committed
        if now != self.saved:
            self.revision_file.save(now)
            self.saved = now
            DELIVERED_REVISION.set(now)
        if snapshot or time.monotonic() - self._snapshot_at >= SNAPSHOT_INTERVAL_S:
            with self.feed.lock:
                # Nothing in flight: the held state is what has been delivered.
                if self.ledger.in_flight == 0:
                    self.snapshot_file.save(self.ledger.committed, self.feed.deriver)
                    self._snapshot_at = time.monotonic()

    def run(self) -> None:
        """Save progress until stop() is called."""
        while not self._stop.wait(SAVE_INTERVAL_S):
            try:
                self.save()
            except OSError as exc:
                log.error("cannot save %s: %s", self.revision_file.path, exc)

    def stop(self) -> None:
        """Stop watching, give queued deliveries a moment, save what completed."""
        self._stop.set()
        self.feed.stop()
        if not self.dispatcher.drain([self.ledger], SHUTDOWN_DRAIN_S):
            log.warning("stopping with deliveries in flight: they run again after a restart")
        self.dispatcher.stop()
        self.save(snapshot=True)
