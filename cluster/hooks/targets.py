"""Where an event goes: an executable in the hooks directory, or a webhook URL.

Each `deliver()` is one attempt; retries and back-off belong to the worker (dispatch.py).
An attempt never raises for the target's own failure: it returns an `Outcome`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests

from cluster.hooks.event import HookEvent

OUTPUT_LIMIT_BYTES = 4096


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one delivery attempt."""

    ok: bool
    detail: str
    """Why it failed, or a short note on success (exit status, HTTP status)."""
    retry: bool = True
    """Whether another attempt may help (a 4xx answer, say, will not)."""
    timed_out: bool = False


class Target:
    """A destination for events; `name` labels logs and metrics."""

    name: str

    def deliver(self, event: HookEvent) -> Outcome:
        raise NotImplementedError


class ProcessTarget(Target):
    """Run an executable with the event in its environment and as JSON on stdin.

    It runs in its own process group; at its time-out the whole group is killed, so a hook
    that forked helpers leaves nothing behind.
    """

    def __init__(self, path: Path, timeout_s: float,
                 base_env: Callable[[], dict[str, str]] | None = None) -> None:
        self.path = path
        self.name = f"exec:{path.name}"
        self.timeout_s = timeout_s
        self._base_env = base_env or (lambda: dict(os.environ))

    def deliver(self, event: HookEvent) -> Outcome:
        env = self._base_env()
        env.update(event.env())
        try:
            proc = subprocess.Popen(
                [str(self.path), event.event], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, env=env, cwd="/", start_new_session=True,
            )
        except OSError as exc:
            return Outcome(False, f"cannot run {self.path}: {exc.strerror or exc}")
        try:
            output, _ = proc.communicate(event.body(), timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return Outcome(False, f"timed out after {self.timeout_s:g}s; process group killed",
                           timed_out=True)
        text = output[-OUTPUT_LIMIT_BYTES:].decode("utf-8", "replace").strip()
        if proc.returncode == 0:
            return Outcome(True, "exit 0")
        detail = f"exit {proc.returncode}" if proc.returncode > 0 else (
            f"killed by signal {-proc.returncode}")
        return Outcome(False, f"{detail}: {text}" if text else detail)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.communicate(timeout=2.0)
    except subprocess.TimeoutExpired:
        # A grandchild left the group and holds the pipe: stop reading, the hook is dead.
        for stream in (proc.stdin, proc.stdout):
            if stream:
                stream.close()
        proc.wait()


class WebhookTarget(Target):
    """POST the event JSON to a URL; 2xx is success, 408/429/5xx and network errors retry."""

    def __init__(self, url: str, timeout_s: float, session: requests.Session | None = None
                 ) -> None:
        self.url = url
        self.name = f"webhook:{url}"
        self.timeout_s = timeout_s
        self.session = session or requests.Session()

    def deliver(self, event: HookEvent) -> Outcome:
        try:
            response = self.session.post(
                self.url, data=event.body(), timeout=self.timeout_s,
                headers={"Content-Type": "application/json", "X-Hook-Event": event.event,
                         "X-Hook-Revision": str(event.revision)},
            )
        except requests.Timeout:
            return Outcome(False, f"no answer within {self.timeout_s:g}s", timed_out=True)
        except requests.RequestException as exc:
            return Outcome(False, f"POST failed: {_first_line(exc)}")
        status = response.status_code
        response.close()
        if 200 <= status < 300:
            return Outcome(True, f"HTTP {status}")
        retry = status >= 500 or status in (408, 429)
        return Outcome(False, f"HTTP {status}", retry=retry)


def _first_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:300]


def scan_directory(directory: Path) -> list[Path]:
    """The hooks to run, like run-parts: executable regular files, sorted by name, skipping
    hidden files and editor or package leftovers (`~`, `.dpkg-*`, `.swp`)."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    hooks = []
    for entry in entries:
        if entry.name.startswith(".") or entry.name.endswith(("~", ".swp", ".bak")) \
                or ".dpkg-" in entry.name:
            continue
        if entry.is_file() and os.access(entry.path, os.X_OK):
            hooks.append(Path(entry.path))
    return hooks
