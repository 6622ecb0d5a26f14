"""Which revision is fully delivered, and the file that remembers it across restarts.

Delivery is at-least-once: the runner persists the highest revision R such that every event
derived from changes up to R has been finished by every target (delivered, or given up on
after its retries and reported). After a restart the watch resumes at R + 1, so an event that
was in flight when the runner died is delivered again, never lost.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path


class DeliveryLedger:
    """Counts unfinished deliveries per revision; thread-safe."""

    def __init__(self, start_revision: int = 0) -> None:
        self._lock = threading.Lock()
        self._pending: dict[int, int] = {}
        self._observed = start_revision

    def add(self, revision: int, count: int = 1) -> None:
        """`count` deliveries for an event of `revision` are now in flight."""
        with self._lock:
            self._pending[revision] = self._pending.get(revision, 0) + count

    def finish(self, revision: int) -> None:
        """One delivery for `revision` is finished (delivered, dropped, or given up on)."""
        with self._lock:
            left = self._pending.get(revision, 0) - 1
            if left > 0:
                self._pending[revision] = left
            else:
                self._pending.pop(revision, None)

    def observe(self, revision: int) -> None:
        """Every event of changes up to `revision` has been handed to `add()`."""
        with self._lock:
            self._observed = max(self._observed, revision)

    @property
    def committed(self) -> int:
        """The highest revision that is delivered completely, with everything before it."""
        with self._lock:
            if not self._pending:
                return self._observed
            return min(self._observed, min(self._pending) - 1)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return sum(self._pending.values())


class RevisionFile:
    """The last fully delivered revision: one decimal number in a file, replaced atomically
    (write, fsync, rename), so a crash leaves the old number or the new one."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> int | None:
        """The saved revision; None when there is none yet. A corrupt file is an error."""
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"revision file {self.path}: {exc}") from None
        if not text.isdigit():
            raise ValueError(f"revision file {self.path} holds {text[:40]!r}, not a revision "
                             "(remove it to start from now)")
        return int(text)

    def save(self, revision: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, f"{revision}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
