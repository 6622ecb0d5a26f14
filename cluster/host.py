"""The host's own tools, as the daemons that drive it use them: system commands, network
namespaces, and the one error a failed change to the host raises (`DriverError`).

The sprayer's drivers (nftables, routes, HAProxy) and the node's TUN device and client routes
change the host they run on; a change that does not apply raises `DriverError` with the
command and its error text.
"""

from __future__ import annotations

import contextlib
import ctypes
import subprocess
from collections.abc import Iterator, Sequence

_CLONE_NEWNET = 0x40000000


class DriverError(Exception):
    """A driver could not apply a change (the command and its error text are in the message)."""


def run(argv: Sequence[str], stdin: str | None = None, timeout_s: float = 30.0) -> str:
    """Run a system tool; a failure becomes a DriverError with its stderr."""
    try:
        r = subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                           timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DriverError(f"{argv[0]}: {e}") from None
    if r.returncode != 0:
        err = (r.stderr or r.stdout).strip().splitlines()
        raise DriverError(f"{' '.join(argv[:4])}: {' / '.join(err[:5])}")
    return r.stdout


@contextlib.contextmanager
def inside_netns(netns: str | None) -> Iterator[None]:
    """Run the block (in this thread) inside network namespace `netns`: sockets and netlink
    contexts created there stay bound to it afterwards, whichever thread uses them."""
    if not netns:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        home = open("/proc/thread-self/ns/net")  # noqa: SIM115 - closed below
        target = open(f"/run/netns/{netns}")  # noqa: SIM115
    except OSError as e:
        raise DriverError(f"network namespace {netns}: {e.strerror}") from None
    with home, target:
        if libc.setns(target.fileno(), _CLONE_NEWNET) != 0:
            raise DriverError(f"cannot enter network namespace {netns}")
        try:
            yield
        finally:
            if libc.setns(home.fileno(), _CLONE_NEWNET) != 0:
                raise DriverError(f"cannot return from network namespace {netns}")


def in_netns(netns: str | None, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
