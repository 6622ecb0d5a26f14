"""A real hooks directory, a real HTTP receiver on 127.0.0.1 and the real `cluster-hooks`
daemon as a subprocess, for the hook runner's integration tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cluster.procs import spawn, stop_pid

# Records every invocation: its HOOK_* environment, its argument and its stdin.
RECORDER = """#!/bin/sh
f="{out}/$(date +%s%N)-$$"
cat > "$f.stdin.tmp"
echo "$1" > "$f.argv"
mv "$f.stdin.tmp" "$f.stdin"
env | grep '^HOOK_' > "$f.env.tmp"
mv "$f.env.tmp" "$f.env"
"""

# Hangs (with a child in its process group) on node-up; records everything else.
HANGER = """#!/bin/sh
if [ "$HOOK_EVENT" = node-up ]; then
    sleep 600 &
    echo "$$ $!" > "{out}/hanging.pids"
    wait
fi
echo "$HOOK_EVENT" >> "{out}/hanger.log"
"""


def write_hook(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    path.chmod(0o755)
    return path


def recorded(out: Path) -> list[dict[str, Any]]:
    """Every completed run of the recorder hook, oldest first: its HOOK_* variables, plus
    `argv1` and the JSON it read on stdin as `stdin`."""
    runs = []
    for env_file in sorted(out.glob("*.env")):
        run: dict[str, Any] = {}
        for line in env_file.read_text().splitlines():
            name, _, value = line.partition("=")
            run[name] = value
        stem = env_file.with_suffix("")
        run["argv1"] = stem.with_suffix(".argv").read_text().strip()
        run["stdin"] = json.loads(stem.with_suffix(".stdin").read_text())
        runs.append(run)
    return runs


class Receiver:
    """An HTTP server on 127.0.0.1 that keeps every POSTed JSON body."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.bodies.append(json.loads(body))
                receiver.headers.append(dict(self.headers))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Runner:
    """`cluster-hooks` as a real subprocess with a TOML config."""

    def __init__(self, tmp: Path, endpoint: str, cluster: str, hooks_dir: Path,
                 webhooks: list[str], timeout_s: float = 5.0, retries: int = 1,
                 metrics: str = "", env: dict[str, str] | None = None) -> None:
        self.cluster = cluster
        self.config = tmp / "cluster-hooks.toml"
        self.state_file = tmp / "hooks.revision"
        self.log = tmp / "cluster-hooks.log"
        self.config.write_text(f"""
[cluster]
name = "{cluster}"

[etcd]
endpoints = ["{endpoint}"]

[log]
level = "info"

[metrics]
listen = "{metrics}"

[hooks]
directory = "{hooks_dir}"
webhooks = {json.dumps(webhooks)}
timeout_s = {timeout_s}
retries = {retries}
backoff_s = 0.2
queue_size = 100
state_file = "{self.state_file}"
""")
        self.env = env or {}
        self.pid: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> None:
        """Spawn the daemon; with `wait`, return once it watches (it saved its revision)."""
        before = self.state_file.stat().st_mtime_ns if self.state_file.exists() else None
        self.proc = spawn([sys.executable, "-m", "cluster.hooks.main", "--config",
                           str(self.config)], self.log, env={**os.environ, **self.env})
        self.pid = self.proc.pid
        if not wait:
            return
        # started = it wrote its state file (it does so once it watches)
        wait_until(lambda: self.state_file.exists()
                   and self.state_file.stat().st_mtime_ns != before, 30,
                   lambda: f"cluster-hooks did not start:\n{self.log_text()}")

    def kill(self) -> None:
        assert self.pid is not None
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        self.pid = None

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, wait for the exit, return its status."""
        assert self.proc is not None and self.pid is not None
        os.kill(self.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        finally:
            self.stop()

    def stop(self) -> None:
        if self.pid is not None:
            stop_pid(self.pid)
            self.pid = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def wait_until(pred: Callable[[], bool], timeout_s: float,
               why: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s. {why()}")
        time.sleep(0.05)


class NotifyListener:
    """A real AF_UNIX datagram socket to pass as NOTIFY_SOCKET: keeps every datagram that
    arrives, as (monotonic time, {KEY: value})."""

    def __init__(self) -> None:
        # sun_path holds 108 bytes: a short directory of its own, not the test's tmp_path.
        self.directory = Path(tempfile.mkdtemp(prefix="hk-notify-"))
        self.path = self.directory / "notify"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.thread = threading.Thread(target=self._receive, daemon=True)
        self.thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            with self._lock:
                self.messages.append((time.monotonic(), fields))

    def received(self, key: str | None = None) -> list[tuple[float, dict[str, str]]]:
        """The datagrams so far (only those that assign `key`)."""
        with self._lock:
            return [m for m in self.messages if key is None or key in m[1]]

    def close(self) -> None:
        self._closed.set()
        self.thread.join(2.0)
        self.sock.close()
        self.path.unlink(missing_ok=True)
        self.directory.rmdir()
