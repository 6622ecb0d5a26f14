"""The `sprayer` console script as a real process: leads, installs its table, survives a dead
etcd without a traceback, stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from cluster.procs import free_port, spawn, stop_pid

VIP = "203.0.113.10"


def config(tmp_path: Path, endpoint: str, lab: Any, name: str) -> Path:
    key = tmp_path / "data.key"
    key.write_text(os.urandom(32).hex())
    key.chmod(0o600)
    path = tmp_path / "sprayer.toml"
    path.write_text(f"""
[cluster]
name = "{name}"
data_key_file = "{key}"
[etcd]
endpoints = ["{endpoint}"]
timeout_s = 1.0
[metrics]
listen = "127.0.0.1:{free_port()}"
[sprayer]
id = "sprayer-t"
vip = "{VIP}"
keyd = ["{lab.addresses['keyd']}"]
lease_ttl_s = 2
netns = "{lab.ns('router')}"
""")
    return path


def table(lab: Any) -> str:
    r = subprocess.run(["ip", "netns", "exec", lab.ns("router"), "nft", "list", "table", "inet",
                        "ipsec_cluster"], capture_output=True, text=True)
    return r.stdout


def wait(pred: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


def test_process_leads_installs_and_stops(lab: Any, etcd_endpoint: str, tmp_path: Path) -> None:
    cfg = config(tmp_path, etcd_endpoint, lab, "p" + uuid.uuid4().hex[:10])
    log = tmp_path / "sprayer.log"
    proc = spawn([sys.executable, "-m", "sprayer.main", "--config", str(cfg)], log)
    try:
        assert wait(lambda: "udp dport 500 meta mark set" in table(lab), 30), log.read_text()
        assert proc.poll() is None
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        stop_pid(proc.pid)
    text = log.read_text()
    assert "became leader" in text and "Traceback" not in text
    # the table stays: the kernel keeps forwarding while a standby takes over
    assert "spi_mark" in table(lab)
    subprocess.run(["ip", "netns", "exec", lab.ns("router"), "nft", "delete", "table", "inet",
                    "ipsec_cluster"], capture_output=True)


def test_dead_etcd_is_survived_without_traceback(lab: Any, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    cfg = config(tmp_path, dead, lab, "dead")
    log = tmp_path / "sprayer.log"
    proc = spawn([sys.executable, "-m", "sprayer.main", "--config", str(cfg)], log)
    try:
        time.sleep(4)
        assert proc.poll() is None, log.read_text()     # still running, retrying
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        stop_pid(proc.pid)
    text = log.read_text()
    assert "Traceback" not in text and "unavailable" in text
