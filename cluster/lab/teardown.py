"""Taking a lab apart: processes by PID (never by name), then namespaces, then files."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from pathlib import Path

from cluster.lab import netns
from cluster.lab.state import ProcessRecord, proc_running


def reaped(rec: ProcessRecord) -> bool:
    """rec's process is gone (reaped if it was our child)."""
    return not running(rec.pid) or not rec.alive()


def teardown(namespaces: list[str], processes: list[ProcessRecord]) -> None:
    """Kill the recorded processes (if still the same ones) and everything left in the
    namespaces, then delete the namespaces (their /run/netns mounts go with them)."""
    for _ in range(3):
        groups = [rec.pid for rec in processes if rec.alive()]
        loose = [pid for ns in namespaces for pid in netns.pids(ns)]
        if not groups and not loose:
            break
        terminate(groups, loose)
    for ns in namespaces:
        netns.delete(ns)


def terminate(groups: list[int], loose: list[int], timeout_s: float = 3.0) -> None:
    """TERM, then KILL: whole process groups (processes the lab started) and single processes
    (whatever else runs in a lab namespace). All at once, so a slow one costs its own wait."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in groups:
            try:
                os.killpg(pid, sig)
            except (ProcessLookupError, PermissionError):
                loose.append(pid)
        for pid in loose:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            groups = [p for p in groups if running(p)]
            loose = [p for p in loose if running(p)]
            if not groups and not loose:
                return
            time.sleep(0.05)


def running(pid: int) -> bool:
    """pid runs (reaping it first if it is our own exited child)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return proc_running(pid)


def save_logs(lab_dir: Path, target: Path) -> None:
    """Copy a lab's logs, configuration and state (not its keys or secrets) to target."""
    target.mkdir(parents=True, exist_ok=True)
    for sub in ("logs", "config"):
        if (lab_dir / sub).is_dir():
            shutil.copytree(lab_dir / sub, target / sub, dirs_exist_ok=True)
    for path in lab_dir.glob("*/strongswan.conf"):
        shutil.copy(path, target / f"{path.parent.name}-strongswan.conf")
    if (lab_dir / "state.json").exists():
        shutil.copy(lab_dir / "state.json", target / "state.json")
