"""The TUN device the node forwards decrypted traffic through, and its routes.

Linux TUN (IFF_TUN | IFF_NO_PI): every read is one IP packet, every write injects one.
Routes for the virtual IPs of owned clients point at the device (issue 4, item 4).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import subprocess

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


class TunError(Exception):
    """The TUN device or a route could not be set up (message says which command)."""


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise TunError(f"ip {' '.join(args)}: {r.stderr.strip() or r.returncode}")


def open_tun(name: str, mtu: int) -> int:
    """Create (or attach to) TUN device `name`, bring it up; return a non-blocking fd."""
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise TunError(f"cannot open /dev/net/tun: {e.strerror}") from None
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
        # before it is up: the kernel's own IPv6 router solicitation would leave through the
        # TUN, for no client, and be counted as a `not_owner` drop
        _sysctl(f"/proc/sys/net/ipv6/conf/{name}/router_solicitations", "0")
        _ip("link", "set", "dev", name, "mtu", str(mtu), "up")
    except OSError as e:
        os.close(fd)
        raise TunError(f"cannot create TUN device {name}: {e.strerror}") from None
    except TunError:
        os.close(fd)
        raise
    # decrypted packets come in on the TUN from client addresses whose return route may
    # point elsewhere during a hand-off: no reverse-path filter on this device
    _sysctl(f"/proc/sys/net/ipv4/conf/{name}/rp_filter", "0")
    return fd


def _sysctl(path: str, value: str) -> None:
    """Best effort: a kernel without IPv6 (or a read-only /proc) only loses a nicety."""
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError:
        pass


def route_to_tun(address: bytes, tun: str) -> None:
    """Route one client address (packed IPv4 or IPv6) to the TUN device."""
    _ip("route", "replace", _host(address), "dev", tun)


def unroute(address: bytes, tun: str) -> None:
    """Remove the route of one client address; quiet if it is already gone."""
    with contextlib.suppress(TunError):
        _ip("route", "del", _host(address), "dev", tun)


def _host(address: bytes) -> str:
    """A client key (packed host address, or packed network + prefix length) for `ip`."""
    from cluster.node.outbound import key_text

    return key_text(address)


def route_via(address: bytes, gateway: str) -> None:
    """Route one client address to another host (the client's new owner after a hand-off)."""
    _ip("route", "replace", _host(address), "via", gateway)


def unroute_via(address: bytes, gateway: str) -> None:
    """Remove a `route_via` route; quiet if the address is routed otherwise by now."""
    with contextlib.suppress(TunError):
        _ip("route", "del", _host(address), "via", gateway)
