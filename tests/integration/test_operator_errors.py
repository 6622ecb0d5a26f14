"""Operator-facing robustness against a real etcd: signals, dead etcd, junk in the keyspace."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

CLUSTERCTL = str(Path(sys.executable).with_name("clusterctl"))


def _env(endpoint: str, cluster: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(CLUSTERCTL_ENDPOINTS=endpoint, CLUSTERCTL_CLUSTER=cluster)
    return env


def _wait_stderr(proc: subprocess.Popen[str], needle: str, timeout_s: float) -> str:
    assert proc.stderr is not None
    seen = ""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
        if needle in line:
            return seen
    raise AssertionError(f"{needle!r} not on stderr: {seen!r}")


def test_ctrl_c_ends_watch_with_130_not_aborted(etcd_endpoint: str) -> None:
    """`clusterctl watch` runs until interrupted: Ctrl-C is its normal end, exit 130, one
    line; click used to print "Aborted!" and exit 1 as if it had failed."""
    env = _env(etcd_endpoint, "w" + uuid.uuid4().hex[:8])
    proc = subprocess.Popen([CLUSTERCTL, "watch"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_stderr(proc, "watching", 60)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert err.strip() == "interrupted"
