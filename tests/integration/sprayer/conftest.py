"""A small lab for the sprayer drivers: sender → router → keyd / node-1 / node-2.

    sender 198.51.100.2 ── 198.51.100.1 router 10.30.1.1 ── 10.30.1.5  keyd
                                               10.30.2.1 ── 10.30.2.11 node-1
                                               10.30.3.1 ── 10.30.3.12 node-2

The VIP 203.0.113.10 is on the loopback of keyd and both nodes, never on the router. Every
namespace has a per-run prefix and is deleted when the test ends, pass or fail.
"""

from __future__ import annotations

import ctypes
import os
import select
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import pytest

from cluster.store.client import Store
from cluster.store.keyspace import Keyspace
from cluster.store.seal import DataKey

VIP = "203.0.113.10"
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@contextmanager
def inside(ns: str) -> Iterator[None]:
    """Run the block (this thread) inside network namespace `ns`; sockets made stay there."""
    with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{ns}") as target:
        if _libc.setns(target.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {ns}")
        try:
            yield
        finally:
            if _libc.setns(home.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


@dataclass
class Lab:
    prefix: str
    addresses = {"keyd": "10.30.1.5", "node-1": "10.30.2.11", "node-2": "10.30.3.12"}

    sh = staticmethod(sh)
    inside = staticmethod(inside)

    def ns(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    def udp(self, role: str, port: int, addr: str = VIP) -> socket.socket:
        with inside(self.ns(role)):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
        s.settimeout(0.05)
        return s

    @staticmethod
    def receive_any(socks: dict[str, socket.socket], timeout_s: float = 2.0) -> dict[str, bytes]:
        """Wait until at least one of `socks` gets a datagram; then drain all briefly."""
        got: dict[str, bytes] = {}
        deadline = time.monotonic() + timeout_s
        while not got and time.monotonic() < deadline:
            ready, _, _ = select.select(list(socks.values()), [], [], 0.1)
            for name, s in socks.items():
                if s in ready:
                    got[name] = s.recv(65535)
        # anything else that may arrive a little later (it must not)
        time.sleep(0.05)
        for name, s in socks.items():
            with suppress(TimeoutError, BlockingIOError):
                got.setdefault(name, s.recv(65535))
        return got


def _sysctl(ns: str, key: str, value: str) -> None:
    sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"{key}={value}")


@pytest.fixture
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    lab = Lab(f"sp{uuid.uuid4().hex[:6]}")
    made: list[str] = []
    try:
        for role in ("sender", "router", "keyd", "node-1", "node-2"):
            sh("ip", "netns", "add", lab.ns(role))
            made.append(lab.ns(role))
            sh("ip", "-n", lab.ns(role), "link", "set", "lo", "up")
            for k in ("all", "default"):
                _sysctl(lab.ns(role), f"net.ipv4.conf.{k}.rp_filter", "0")
        r = lab.ns("router")
        _sysctl(r, "net.ipv4.ip_forward", "1")
        sh("ip", "-n", r, "link", "add", "front", "type", "veth", "peer", "name", "eth0",
           "netns", lab.ns("sender"))
        sh("ip", "-n", r, "addr", "add", "198.51.100.1/24", "dev", "front")
        sh("ip", "-n", r, "link", "set", "front", "up")
        s = lab.ns("sender")
        sh("ip", "-n", s, "addr", "add", "198.51.100.2/24", "dev", "eth0")
        sh("ip", "-n", s, "link", "set", "eth0", "up")
        sh("ip", "-n", s, "route", "add", "default", "via", "198.51.100.1")
        for i, (role, addr) in enumerate(lab.addresses.items(), start=1):
            n = lab.ns(role)
            sh("ip", "-n", r, "link", "add", f"back{i}", "type", "veth", "peer", "name", "eth0",
               "netns", n)
            sh("ip", "-n", r, "addr", "add", f"10.30.{i}.1/24", "dev", f"back{i}")
            sh("ip", "-n", r, "link", "set", f"back{i}", "up")
            sh("ip", "-n", n, "addr", "add", f"{addr}/24", "dev", "eth0")
            sh("ip", "-n", n, "link", "set", "eth0", "up")
            sh("ip", "-n", n, "addr", "add", f"{VIP}/32", "dev", "lo")
            sh("ip", "-n", n, "route", "add", "default", "via", f"10.30.{i}.1")
            for k in ("eth0", "lo"):
                _sysctl(n, f"net.ipv4.conf.{k}.rp_filter", "0")
        for dev in ("front", "back1", "back2", "back3"):
            _sysctl(r, f"net.ipv4.conf.{dev}.rp_filter", "0")
        yield lab
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


@pytest.fixture
def store(etcd_endpoint: str) -> Iterator[Store]:
    """A store on the session's etcd, in a keyspace of its own, with a throwaway data key."""
    s = Store([etcd_endpoint], Keyspace("sp" + uuid.uuid4().hex[:10]),
              DataKey(os.urandom(32), "test"), timeout_s=5.0)
    try:
        yield s
    finally:
        s.close()
