"""The TUN device the node forwards decrypted traffic through, and its routes.

Linux TUN (IFF_TUN | IFF_NO_PI): every read is one IP packet, every write injects one.
Routes for the virtual IPs of owned clients point at the device (issue 4, item 4).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import socket
import struct
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from cluster.host import DriverError
from cluster.netlink import RTA_OIF as RTA_OIF  # the node's route messages name the TUN
from cluster.netlink import (
    open_route_socket,
    push_route,
    send_batch,
)
from cluster.node.outbound import key_text

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


RT_SCOPE_LINK = 253
#: what `ip route` tags its routes with (RTPROT_BOOT): a route written here looks the same
RTPROT_BOOT = 3


@dataclass(frozen=True, slots=True)
class RouteChange:
    """One client route change: `tun` routes the address to the TUN device, `del` removes
    that route, `via` routes it to another host (`gateway`), `unvia` removes that route."""

    action: Literal["tun", "del", "via", "unvia"]
    address: bytes  # a client key: packed host address, or packed network + prefix length
    gateway: str = ""


def push_route_change(seq: int, change: RouteChange, ifindex: int) -> bytes:
    """The RTM_NEWROUTE (create or replace) / RTM_DELROUTE message for one change, in the
    main table, as `ip route replace|del <key> dev <tun>|via <gateway>` would send it."""
    net = ipaddress.ip_network(key_text(change.address), strict=False)
    delete = change.action in ("del", "unvia")
    via = change.action in ("via", "unvia")
    if via and ipaddress.ip_address(change.gateway).version != net.version:
        raise TunError(f"route {net} via {change.gateway}: address families differ")
    scope = None if delete or via or net.version == 6 else RT_SCOPE_LINK
    return push_route(seq, delete, str(net.network_address), change.gateway if via else None,
                      None, 0 if delete else RTPROT_BOOT, prefix=net.prefixlen,
                      oif=0 if via else ifindex, scope=scope)


def _describe(change: RouteChange, tun: str) -> str:
    where = f"via {change.gateway}" if change.action in ("via", "unvia") else f"dev {tun}"
    verb = "del" if change.action in ("del", "unvia") else "replace"
    return f"ip route {verb} {key_text(change.address)} {where}"


def _route_socket() -> socket.socket:
    try:
        return open_route_socket()
    except DriverError as e:
        raise TunError(str(e)) from None


class RouteWriter:
    """Client routes through rtnetlink (one NETLINK_ROUTE socket in this process's network
    namespace): a batch of changes goes out in order, one acknowledgement per change. Forking
    `ip` per route costs milliseconds; a node taking over thousands of clients at once needs
    thousands of routes."""

    def __init__(self, tun: str) -> None:
        self.tun = tun
        self.sock = _route_socket()
        self._seq = 0
        self._ifindex = 0

    def _index(self) -> int:
        if not self._ifindex:
            try:
                self._ifindex = socket.if_nametoindex(self.tun)
            except OSError:
                raise TunError(f"no TUN device {self.tun}") from None
        return self._ifindex

    def apply(self, changes: Sequence[RouteChange]) -> list[str]:
        """Apply the changes in order; return one message per refused change (removing a
        route that is already gone is no refusal). Raises TunError if netlink fails."""
        if not changes:
            return []
        ifindex = self._index() if any(c.action in ("tun", "del") for c in changes) else 0
        failures: list[str] = []
        msgs: list[tuple[int, str, bytes, bool]] = []
        for change in changes:
            self._seq = (self._seq + 1) & 0xFFFFFFFF
            try:
                msg = push_route_change(self._seq, change, ifindex)
            except (TunError, ValueError) as e:
                failures.append(f"{_describe(change, self.tun)}: {e}")
                continue
            msgs.append((self._seq, _describe(change, self.tun), msg,
                         change.action in ("del", "unvia")))
        try:
            failures += send_batch(self.sock, msgs)
        except (OSError, DriverError) as e:
            # the socket may hold late acknowledgements now: start over on a new one
            self._reopen()
            raise TunError(f"rtnetlink: {e}") from None
        return failures

    def _reopen(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        self.sock = _route_socket()

    def close(self) -> None:
        self.sock.close()


def apply_routes(changes: Iterable[RouteChange], tun: str) -> list[str]:
    """Apply route changes on a socket of their own (e.g. at shutdown); refusals returned."""
    writer = RouteWriter(tun)
    try:
        return writer.apply(list(changes))
    finally:
        writer.close()
