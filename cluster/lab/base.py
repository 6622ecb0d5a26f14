"""What every part of the `Lab` handle stands on: its state and naming, the lock that
changes run under (`_mutating`), and the processes it spawns and waits for."""

from __future__ import annotations

import fcntl
import functools
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

from cluster.lab import netns, strongswan, vm
from cluster.lab.errors import LabError
from cluster.lab.pki import LabPki
from cluster.lab.state import LabState, ProcessRecord, proc_start_ticks
from cluster.procs import spawn

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


P = ParamSpec("P")
R = TypeVar("R")
L = TypeVar("L", bound="LabBase")


def _mutating(method: Callable[Concatenate[L, P], R]) -> Callable[Concatenate[L, P], R]:
    """Run a method that changes the lab under the lab's lock, on its latest state.

    Several processes may drive one lab (a test and `clusterctl lab add-client`, say): each
    change re-reads state.json under an exclusive flock and writes it back before unlocking.
    """

    @functools.wraps(method)
    def locked(self: L, *args: P.args, **kwargs: P.kwargs) -> R:
        if self._lock_depth:
            return method(self, *args, **kwargs)
        fd = os.open(self.dir / "lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._lock_depth += 1
            if self.state.path.exists():
                self.state.__dict__.update(LabState.load(self.name).__dict__)
            try:
                return method(self, *args, **kwargs)
            finally:
                self._lock_depth -= 1
                if self.dir.exists():
                    self.state.save()
        finally:
            os.close(fd)

    return locked


def _require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces)")


TOOLS = ("ip", "nft", "ss", "etcd", "iperf3", "nsenter", "unshare", "swanctl")


def _require_tools() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if not Path(strongswan.CHARON).exists():
        missing.append(strongswan.CHARON)
    if missing:
        raise LabError(f"not installed: {', '.join(missing)} (run `make bootstrap`)")


class LabBase:
    """A lab's state.json, names, and the processes it records."""

    def __init__(self, state: LabState, progress: Progress = _quiet) -> None:
        self.state = state
        self.progress = progress
        self.pki = LabPki(self.dir / "pki")
        self._lock_depth = 0

    # ---- naming -------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.state.name

    @property
    def dir(self) -> Path:
        return Path(self.state.directory)

    def ns(self, role: str) -> str:
        return f"{self.state.prefix}{role}"

    @property
    def etcd_endpoint(self) -> str:
        """etcd as seen from the root namespace (through the loopback forwarder)."""
        return f"http://127.0.0.1:{self.state.etcd_port}"

    def _add_ns(self, role: str) -> str:
        ns = self.ns(role)
        self.state.namespaces.append(ns)
        self.state.save()
        netns.add(ns)
        return ns

    # ---- processes ------------------------------------------------------------------------

    def _record(self, role: str, pid: int, argv: list[str], log: Path, ns: str | None) -> None:
        self.state.processes[role] = ProcessRecord(
            role=role, pid=pid, start_ticks=proc_start_ticks(pid), argv=argv, log=str(log),
            netns=ns)
        self.state.save()

    def _spawn(self, role: str, argv: list[str], ns: str | None) -> ProcessRecord:
        log = self.dir / "logs" / f"{role.replace(':', '-')}.log"
        log.parent.mkdir(exist_ok=True)
        proc = spawn(argv, log)
        self._record(role, proc.pid, argv, log, ns)
        return self.state.processes[role]

    def _alive(self, role: str) -> bool:
        rec = self.state.processes.get(role)
        if rec is None or not rec.alive():
            if rec is None:
                raise LabError(f"{role} exited (its output: logs/)")
            last = last_line(Path(rec.log))
            raise LabError(f"{role} exited (its output: {Path(rec.log).name}"
                           f"{': ' + last if last else ''})")
        return True

    def _wait(self, what: str, ready: Callable[[], bool], timeout_s: float) -> None:
        timeout_s = vm.patient(timeout_s)
        deadline = time.monotonic() + timeout_s
        while not ready():
            if time.monotonic() > deadline:
                raise LabError(f"timed out after {timeout_s:g}s waiting for {what}")
            time.sleep(0.1)


def last_line(log: Path) -> str:
    """The last line of a log (its last 4 KiB are read; "" if it cannot be read)."""
    try:
        with log.open("rb") as f:
            f.seek(max(0, log.stat().st_size - 4096))
            lines = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][-300:] if lines else ""
