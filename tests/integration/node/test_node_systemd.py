"""`cluster-node` under systemd (Type=notify, WatchdogSec=): READY=1 once its lease exists and
its SAs are synced, WATCHDOG=1 from its control loop, STOPPING=1 on SIGTERM. systemd's side
is a real AF_UNIX datagram socket passed as NOTIFY_SOCKET, as systemd does."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

from node_lab import NodeLab
from tests_node_helpers import wait_until

from cluster.store import NodeRecord


def _datagrams(sock: socket.socket, until: float) -> list[tuple[float, str]]:
    out = []
    while time.monotonic() < until:
        sock.settimeout(max(0.01, until - time.monotonic()))
        try:
            out.append((time.monotonic(), sock.recv(4096).decode()))
        except TimeoutError:
            break
    return out


def test_ready_watchdog_and_stopping_reach_notify_socket(node_lab: NodeLab,
                                                          tmp_path: Path) -> None:
    lab = node_lab
    lab.store.put(lab.child_sa())  # one SA in etcd before the start: part of the first sync
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        # WATCHDOG_USEC 400 ms: a ping at least every 200 ms
        lab.start_node("node-1", env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"})
        got = _datagrams(sock, time.monotonic() + 3.0)
        ready = [m for _, m in got if "READY=1" in m.split("\n")]
        assert len(ready) == 1, got
        assert "STATUS=node node-1: lease held, 1 SAs loaded" in ready[0], ready
        # the lease existed when READY=1 was sent: nodes/node-1 is on a lease
        v = lab.store.get(NodeRecord, "node-1")
        assert v is not None and v.lease_id, v
        pings = [t for t, m in got if m == "WATCHDOG=1"]
        assert len(pings) >= 5, got
        assert not any("STOPPING=1" in m for _, m in got)

        proc = lab.procs["node-1"]
        proc.send_signal(signal.SIGTERM)  # cluster-node itself (the ip netns exec execs it)
        assert wait_until(lambda: proc.poll() is not None, 15), lab.log("node-1")
        lab.procs.pop("node-1")
        after = _datagrams(sock, time.monotonic() + 0.5)
        assert any(m.startswith("STOPPING=1") for _, m in after), after
        assert proc.returncode == 0, lab.log("node-1")
        assert lab.store.get(NodeRecord, "node-1") is None  # lease revoked on the way out
    finally:
        sock.close()


def test_without_notify_socket_nothing_changes(node_lab: NodeLab) -> None:
    lab = node_lab
    lab.start_node("node-1", env={"NOTIFY_SOCKET": "", "WATCHDOG_USEC": "junk"})
    assert wait_until(lambda: "node node-1 up" in lab.log("node-1"), 15), lab.log("node-1")
    assert "Traceback" not in lab.log("node-1")
