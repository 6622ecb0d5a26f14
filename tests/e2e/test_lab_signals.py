"""Operator-facing robustness of `clusterctl lab`: a signal half way leaves nothing behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from cluster.lab import netns
from cluster.lab.state import labs_root


def test_sigterm_during_lab_up_removes_what_was_built(lab_name: str) -> None:
    """SIGTERM (a time-out, systemd) killed `lab up` on the spot: namespaces, etcd, keyd and
    the lab's files stayed behind. Now it unwinds like Ctrl-C: removed, exit 143."""
    clusterctl = str(Path(sys.executable).with_name("clusterctl"))
    proc = subprocess.Popen([clusterctl, "lab", "up", "--name", lab_name, "--nodes", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen = ""
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            seen += line
            if not line or "starting etcd" in line:
                break
        assert "starting etcd" in seen, seen
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, seen + err
    assert "terminated" in err
    assert "Traceback" not in seen + err
    assert not netns.listed(f"ipsc-{lab_name}_")
    assert not (labs_root() / lab_name).exists()
