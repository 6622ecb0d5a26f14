"""Starting and stopping the real processes the lab and the tests run (etcd, and friends).

Every process is started in its own process group and remembered by PID, so it can be
stopped — with its children — even when the caller failed half way.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_tcp(host: str, port: int, timeout_s: float) -> None:
    """Wait until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s}s") from None
            time.sleep(0.05)


def stop_pid(pid: int, timeout_s: float = 5.0) -> None:
    """SIGTERM the process group of `pid`, then SIGKILL whatever is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done:
                    return
            except ChildProcessError:
                # not our child: poll for existence
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    return
            time.sleep(0.05)


def spawn(argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start argv in a new session, output appended to log_path."""
    log = open(log_path, "ab")  # noqa: SIM115 - the child owns it
    try:
        return subprocess.Popen(
            list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env, cwd=cwd,
        )
    finally:
        log.close()


class Spawned:
    """A server process the project starts itself (`spawn`): its pid while it runs, and a
    stop that ends it by that pid."""

    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc.pid)
            self.proc = None


#: Raft timing of a cluster of several members (all on one machine here: loopback or
#: namespaces); the playbooks' etcd role has the same defaults (etcd_election_timeout_ms)
HEARTBEAT_MS = 100
ELECTION_TIMEOUT_MS = 500


class EtcdServer(Spawned):
    """One real etcd member (Debian's etcd-server) with its own data dir.

    `tls` is an optional (ca, cert, key) triple of PEM paths: then clients must speak TLS and
    present a certificate from that CA (`--client-cert-auth`). `initial_cluster` (name →
    peer URL of every member, this one included) makes it one member of a cluster; by
    default it is a cluster of its own.
    """

    def __init__(self, data_dir: Path, host: str = "127.0.0.1", client_port: int | None = None,
                 peer_port: int | None = None, tls: tuple[Path, Path, Path] | None = None,
                 netns: str | None = None, name: str = "etcd",
                 initial_cluster: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.host = host
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self.tls = tls
        self.netns = netns
        self.name = name
        self.initial_cluster = initial_cluster
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    def argv(self) -> list[str]:
        peer = self.peer_url
        members = self.initial_cluster or {self.name: peer}
        argv = [
            "etcd", "--name", self.name, "--data-dir", str(self.data_dir / "member"),
            "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", ",".join(f"{n}={u}" for n, u in members.items()),
            "--initial-cluster-state", "new",
            "--log-level", "warn", "--logger", "zap",
        ]
        if len(members) > 1:
            # a killed leader replaced in 0.5..1 s rather than 1..2 s (etcd's defaults, 100 /
            # 1000 ms): well within the holders' 3 s leases (cluster/store/membership.py)
            argv += ["--heartbeat-interval", str(HEARTBEAT_MS),
                     "--election-timeout", str(ELECTION_TIMEOUT_MS)]
        if self.tls:
            ca, cert, key = self.tls
            argv += ["--cert-file", str(cert), "--key-file", str(key),
                     "--trusted-ca-file", str(ca), "--client-cert-auth"]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        return argv

    def start(self, timeout_s: float = 20.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = spawn(self.argv(), self.data_dir / "etcd.log")
        try:
            if self.netns:
                self._wait_in_netns(timeout_s)
            else:
                deadline = time.monotonic() + timeout_s
                wait_tcp(self.host, self.client_port, timeout_s)
                self._wait_healthy(deadline)
        except TimeoutError:
            self.stop()
            log = (self.data_dir / "etcd.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"etcd did not start on {self.endpoint}:\n{log}") from None

    def _wait_healthy(self, deadline: float) -> None:
        """Wait until etcd says it is healthy (it has a leader and serves requests): a
        listening port alone is not enough after a restart."""
        context = None
        if self.tls:
            ca, cert, key = self.tls
            context = ssl.create_default_context(cafile=str(ca))
            context.load_cert_chain(str(cert), str(key))
        while True:
            try:
                with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1.0,
                                            context=context) as r:
                    if json.loads(r.read()).get("health") == "true":
                        return
            except (OSError, ValueError, ssl.SSLError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError
            time.sleep(0.05)

    def _wait_in_netns(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                break
            probe = (f"import socket; socket.create_connection(({self.host!r}, "
                     f"{self.client_port}), timeout=0.5).close()")
            r = subprocess.run(
                ["ip", "netns", "exec", str(self.netns), sys.executable, "-c", probe],
                capture_output=True,
            )
            if r.returncode == 0:
                return
            time.sleep(0.1)
        raise TimeoutError
