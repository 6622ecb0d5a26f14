"""Network namespaces, links and commands run inside them, through iproute2.

Every command that changes the machine goes through `run`, so a failure becomes one
`LabError` line naming the command and what it printed.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from cluster.lab.errors import LabError
from cluster.lab.vm import patient

NETNS_DIR = Path("/run/netns")
_CLONE_NEWNET = 0x40000000


def run(argv: Sequence[str], check: bool = True, timeout_s: float = 30.0,
        input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output; raise LabError with its stderr when it fails."""
    timeout_s = patient(timeout_s)
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s,
                              input=input_text, stdin=None if input_text else subprocess.DEVNULL)
    except FileNotFoundError:
        raise LabError(f"{argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"`{' '.join(argv)}` did not finish within {timeout_s:g}s") from None
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise LabError(f"`{' '.join(argv)}` failed: {detail[-1] if detail else proc.returncode}")
    return proc


def exists(ns: str) -> bool:
    return (NETNS_DIR / ns).exists()


def listed(prefix: str) -> list[str]:
    """Namespaces whose name starts with prefix."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))


def add(ns: str) -> None:
    run(["ip", "netns", "add", ns])
    in_ns(ns, ["ip", "link", "set", "lo", "up"])


def delete(ns: str) -> None:
    if exists(ns):
        run(["ip", "netns", "delete", ns], check=False)


def in_ns(ns: str, argv: Sequence[str], check: bool = True,
          timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    return run(["ip", "netns", "exec", ns, *argv], check=check, timeout_s=timeout_s)


def exec_argv(ns: str, argv: Sequence[str]) -> list[str]:
    """argv that runs `argv` inside namespace ns (for spawn)."""
    return ["ip", "netns", "exec", ns, *argv]


def pids(ns: str) -> list[int]:
    """Every process whose network namespace is ns."""
    if not exists(ns):
        return []
    out = run(["ip", "netns", "pids", ns], check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def veth(a_ns: str, a_name: str, b_ns: str, b_name: str) -> None:
    """A veth pair with one end in each namespace; both ends up."""
    run(["ip", "link", "add", a_name, "netns", a_ns, "type", "veth",
         "peer", "name", b_name, "netns", b_ns])
    in_ns(a_ns, ["ip", "link", "set", a_name, "up"])
    in_ns(b_ns, ["ip", "link", "set", b_name, "up"])


def bridge(ns: str, name: str) -> None:
    """A bridge with an address of its own: left to itself, a bridge takes the lowest
    address of its ports and changes it as ports come and go, which leaves every neighbour
    with a stale ARP entry for the router for a while."""
    mac = "02:" + ":".join(f"{b:02x}" for b in os.urandom(5))
    in_ns(ns, ["ip", "link", "add", name, "address", mac, "type", "bridge"])
    in_ns(ns, ["ip", "link", "set", name, "up"])


def enslave(ns: str, link: str, bridge_name: str) -> None:
    in_ns(ns, ["ip", "link", "set", link, "master", bridge_name])


def address(ns: str, link: str, cidr: str) -> None:
    in_ns(ns, ["ip", "addr", "add", cidr, "dev", link])


def address6(ns: str, link: str, cidr: str) -> None:
    """An IPv6 address usable at once (no duplicate address detection: the lab's addresses
    are unique by construction, and a tentative address would drop the first packets)."""
    in_ns(ns, ["ip", "-6", "addr", "add", cidr, "dev", link, "nodad"])


def route(ns: str, *spec: str) -> None:
    in_ns(ns, ["ip", "route", "replace", *spec])


def sysctl(ns: str, key: str, value: str) -> None:
    in_ns(ns, ["sysctl", "-q", "-w", f"{key}={value}"])


def nft(ns: str, ruleset: str) -> None:
    """Load an nftables ruleset (nft -f syntax) in namespace ns."""
    run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input_text=ruleset)


def enter(ns: str) -> None:
    """Move the calling thread into namespace ns (sockets it opens afterwards live there)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(NETNS_DIR / ns, os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise LabError(f"cannot enter network namespace {ns}: {os.strerror(err)}")
    finally:
        os.close(fd)
