"""Tell systemd how a daemon is doing: the sd_notify protocol, without libsystemd.

The units Ansible installs are `Type=notify` with `WatchdogSec=`. systemd then passes two
things in the environment:

- `NOTIFY_SOCKET`: an AF_UNIX datagram socket, a path (`/run/systemd/notify`) or an abstract
  name written with a leading `@`. One datagram carries newline-separated `KEY=value`
  assignments (sd_notify(3)).
- `WATCHDOG_USEC` (and `WATCHDOG_PID`): the watchdog timeout. The service must send
  `WATCHDOG=1` more often than that; sd_watchdog_enabled(3) recommends half of it.

What a daemon does with it:

    watchdog = start_watchdog()       # in the running event loop; None without a watchdog
    ...
    notify_ready("serving")           # after its lease exists and its first sync is done
    ...
    notify_stopping()
    if watchdog is not None:
        watchdog.cancel()

Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op that returns False. A broken
`NOTIFY_SOCKET` or a failed send is logged once and reported as False: telling systemd is
never worth crashing a daemon for.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)

_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning("%s", message)


def notify_address(env: Mapping[str, str] | None = None) -> str | bytes | None:
    """The socket address in `NOTIFY_SOCKET`, in the form `socket.sendto` takes.

    `@name` is an abstract socket: a leading NUL byte on the wire. None when the variable is
    unset or empty, or names something that is not an AF_UNIX socket (`vsock:` and relative
    paths are not supported here; that is logged once).
    """
    value = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    _warn_once(f"NOTIFY_SOCKET={value!r} is not an AF_UNIX path or @abstract name; "
               "not notifying systemd")
    return None


def notify(*assignments: str, env: Mapping[str, str] | None = None) -> bool:
    """Send `KEY=value` assignments to systemd in one datagram.

    Returns True when the datagram was sent, False when there is nobody to tell or the
    send failed (logged once per kind of failure).
    """
    for assignment in assignments:
        if "=" not in assignment or assignment.startswith("="):
            raise ValueError(f"not a KEY=value assignment: {assignment!r}")
    address = notify_address(env)
    if address is None:
        return False
    message = "\n".join(assignments).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            # Never block the daemon's loop on a receiver whose queue is full.
            sock.setblocking(False)
            sock.sendto(message, address)
    except OSError as exc:
        _warn_once(f"cannot notify systemd at {address!r}: {exc.strerror or exc}")
        return False
    return True


def _one_line(text: str) -> str:
    # A newline would start a new assignment: STATUS= is one line.
    return " ".join(text.split())


def notify_ready(status: str | None = None, env: Mapping[str, str] | None = None) -> bool:
    """READY=1: call once the daemon's lease exists and its first sync is done."""
    fields = ["READY=1"]
    if status is not None:
        fields.append(f"STATUS={_one_line(status)}")
    return notify(*fields, env=env)


def notify_status(status: str, env: Mapping[str, str] | None = None) -> bool:
    """STATUS=: a one-line description `systemctl status` shows."""
    return notify(f"STATUS={_one_line(status)}", env=env)


def notify_watchdog(env: Mapping[str, str] | None = None) -> bool:
    """WATCHDOG=1: the daemon is alive; send it every `watchdog_interval_s()`."""
    return notify("WATCHDOG=1", env=env)


def notify_stopping(status: str | None = None, env: Mapping[str, str] | None = None) -> bool:
    """STOPPING=1: the daemon began an orderly shutdown."""
    fields = ["STOPPING=1"]
    if status is not None:
        fields.append(f"STATUS={_one_line(status)}")
    return notify(*fields, env=env)


def watchdog_interval_s(env: Mapping[str, str] | None = None,
                        pid: int | None = None) -> float | None:
    """How often to send WATCHDOG=1: half of `WATCHDOG_USEC`, in seconds.

    None when the watchdog is off: `WATCHDOG_USEC` unset, not a positive integer, or
    `WATCHDOG_PID` names another process (the variables were inherited, not meant for us).
    """
    environ = os.environ if env is None else env
    raw_usec = environ.get("WATCHDOG_USEC", "")
    if not raw_usec:
        return None
    try:
        usec = int(raw_usec)
    except ValueError:
        _warn_once(f"WATCHDOG_USEC={raw_usec!r} is not an integer; watchdog off")
        return None
    if usec <= 0:
        return None
    raw_pid = environ.get("WATCHDOG_PID", "")
    if raw_pid:
        try:
            watchdog_pid = int(raw_pid)
        except ValueError:
            _warn_once(f"WATCHDOG_PID={raw_pid!r} is not an integer; watchdog off")
            return None
        if watchdog_pid != (os.getpid() if pid is None else pid):
            return None
    return usec / 2 / 1_000_000


async def feed_watchdog(interval_s: float, env: Mapping[str, str] | None = None) -> None:
    """Send WATCHDOG=1 every `interval_s` until cancelled.

    Run it as a task on the daemon's own event loop: if the loop stalls, the pings stop and
    systemd restarts the daemon, which is the point of the watchdog.
    """
    while True:
        notify_watchdog(env=env)
        await asyncio.sleep(interval_s)


def start_watchdog(env: Mapping[str, str] | None = None) -> asyncio.Task[None] | None:
    """Start `feed_watchdog` on the running event loop when systemd asked for a watchdog.

    Returns the task (cancel it on shutdown), or None when the watchdog is off. Must be
    called from inside the loop (a coroutine or callback).
    """
    interval_s = watchdog_interval_s(env)
    if interval_s is None:
        return None
    return asyncio.get_running_loop().create_task(feed_watchdog(interval_s, env=env),
                                                  name="systemd-watchdog")


class WatchdogTicker:
    """The watchdog for a daemon whose main loop is a plain thread, not an event loop.

    Call `tick(now_s)` (a monotonic time) on every turn of the loop; it sends WATCHDOG=1 when
    half the watchdog time passed since the last one. If the loop stalls, the pings stop.
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.interval_s = watchdog_interval_s(env)
        self._env = env
        self._next_s = 0.0

    def tick(self, now_s: float) -> None:
        if self.interval_s is not None and now_s >= self._next_s:
            notify_watchdog(env=self._env)
            self._next_s = now_s + self.interval_s
