"""The HAProxy driver against a real haproxy on loopback: add, weight, drain, remove."""

from __future__ import annotations

import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.host import DriverError
from cluster.procs import free_port, spawn, stop_pid, wait_tcp
from sprayer.haproxy import DesiredServer, HAProxyDriver, HAProxyRuntime

CONFIG = """\
global
    stats socket {sock} mode 600 level admin
defaults
    mode tcp
    timeout connect 1s
    timeout client 5s
    timeout server 5s
frontend natt_tcp
    bind 127.0.0.1:{port}
    default_backend ipsec_nodes
backend ipsec_nodes
    balance roundrobin
"""


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[tuple[HAProxyRuntime, int]]:
    if shutil.which("haproxy") is None:
        pytest.fail("haproxy is not installed")
    sock, port = tmp_path / "admin.sock", free_port()
    (tmp_path / "haproxy.cfg").write_text(CONFIG.format(sock=sock, port=port))
    proc = spawn(["haproxy", "-db", "-f", str(tmp_path / "haproxy.cfg")], tmp_path / "log")
    try:
        wait_tcp("127.0.0.1", port, 10.0)
        yield HAProxyRuntime(str(sock)), port
    finally:
        stop_pid(proc.pid)


class Echo:
    """A TCP server that answers every connection with its name, counting connections."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.hits = 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.hits += 1
            with conn:
                conn.sendall(self.name.encode())


def connect_all(port: int, n: int) -> list[str]:
    names = []
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            names.append(s.recv(100).decode())
    return names


def test_drain_weight_add_remove(haproxy: tuple[HAProxyRuntime, int]) -> None:
    rt, port = haproxy
    drv = HAProxyDriver(rt, "ipsec_nodes")
    a, b = Echo("node-1"), Echo("node-2")
    desired = {
        "node-1": DesiredServer("node-1", "127.0.0.1", a.port, 100, drain=False),
        "node-2": DesiredServer("node-2", "127.0.0.1", b.port, 100, drain=False),
    }
    assert drv.sync(desired) == ["add node-1", "ready node-1", "add node-2", "ready node-2"]
    assert drv.sync(desired) == []  # idempotent
    state = rt.servers("ipsec_nodes")
    assert {s.admin for s in state.values()} == {"ready"}
    assert set(connect_all(port, 10)) == {"node-1", "node-2"}

    # weights: node-2 three times node-1
    desired["node-2"] = DesiredServer("node-2", "127.0.0.1", b.port, 300, drain=False)
    assert drv.sync(desired) == ["weight node-1 85", "weight node-2 256"]
    counts = connect_all(port, 40)
    assert counts.count("node-2") > 2 * counts.count("node-1")

    # drain node-1: new connections go to node-2 only
    desired["node-1"] = DesiredServer("node-1", "127.0.0.1", a.port, 100, drain=True)
    assert drv.sync(desired) == ["drain node-1"]
    assert rt.servers("ipsec_nodes")["node-1"].admin == "drain"
    assert set(connect_all(port, 10)) == {"node-2"}

    # node-1 leaves the cluster
    del desired["node-1"]
    assert drv.sync(desired) == ["del node-1"]
    assert set(rt.servers("ipsec_nodes")) == {"node-2"}


def test_errors_are_driver_errors(haproxy: tuple[HAProxyRuntime, int], tmp_path: Path) -> None:
    rt, _ = haproxy
    with pytest.raises(DriverError, match="nosuch"):
        HAProxyDriver(rt, "nosuch").sync({})
    with pytest.raises(DriverError, match="refused"):
        rt.set_weight("ipsec_nodes", "ghost", 3)
    with pytest.raises(DriverError, match="runtime API"):
        HAProxyRuntime(str(tmp_path / "missing.sock")).servers("ipsec_nodes")
