"""Checking that the kernel's SPI map holds what the sprayer applied, off the loop's thread.

The sprayer writes its SPI map in batches and remembers what it wrote; if the kernel's map
ever differs (flushed or edited by hand, a table recreated behind its back), ESP of those
clients goes to the wrong node or none. The leader reads the map back after every full
rewrite and then every `map_check_interval_s`, on a thread of its own (a 100 k map takes about
half a second to list, longer than a probe interval), and the loop repairs a difference by
rewriting the whole map atomically.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from cluster.host import DriverError
from sprayer.nft import MapDiff, SpiMapCheck

log = logging.getLogger("sprayer.mapcheck")


class MapChecker:
    """At most one check in flight; `step()` on the loop's thread starts one when due and
    hands back the difference of one that finished (None: nothing to repair)."""

    def __init__(self, interval_s: float, wake: Callable[[], None]) -> None:
        self.interval_s = interval_s
        self._wake = wake
        self._next = 0.0
        self._running = False
        self._done: tuple[SpiMapCheck, MapDiff | DriverError] | None = None
        self._lock = threading.Lock()

    def due_now(self) -> None:
        """Check again as soon as possible (after a full rewrite)."""
        self._next = 0.0

    def step(self, now_m: float, start: Callable[[], SpiMapCheck | None]) -> MapDiff | None:
        with self._lock:
            done, self._done = self._done, None
        found = self._judge(*done) if done is not None else None
        if self.interval_s > 0 and not self._running and now_m >= self._next:
            check = start()
            if check is not None:
                self._running = True
                self._next = now_m + self.interval_s
                threading.Thread(target=self._run, args=(check,), name="spi-map-check",
                                 daemon=True).start()
        return found

    def _run(self, check: SpiMapCheck) -> None:
        result: MapDiff | DriverError
        try:
            result = check.run()
        except DriverError as exc:
            result = exc
        except Exception as exc:  # never leave a check marked running: the next one is due
            result = DriverError(f"{type(exc).__name__}: {exc}")
        with self._lock:
            self._done = (check, result)
        self._wake()

    def _judge(self, check: SpiMapCheck, result: MapDiff | DriverError) -> MapDiff | None:
        self._running = False
        if isinstance(result, DriverError):
            log.warning("could not read the SPI map back to check it: %s", result)
            return None
        if not check.current() or result.total == 0:
            return None     # changed meanwhile (the next check tells), or as applied
        return result
