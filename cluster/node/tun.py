"""The TUN device the node forwards decrypted traffic through, and its routes.

Linux TUN (IFF_TUN | IFF_NO_PI): every read is one IP packet, every write injects one.
Routes for the virtual IPs of owned clients point at the device (issue 4, item 4).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import os
import socket
import struct
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from cluster.node.outbound import key_text
from sprayer.backends import DriverError
from sprayer.netlink import (
    BATCH,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    RT_SCOPE_NOWHERE,
    RT_SCOPE_UNIVERSE,
    RT_TABLE_MAIN,
    RTA_DST,
    RTA_GATEWAY,
    RTM_DELROUTE,
    RTM_NEWROUTE,
    RTN_UNICAST,
    open_route_socket,
    pull_acks,
)

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


RTA_OIF = 4
RT_SCOPE_LINK = 253
#: what `ip route` tags its routes with (RTPROT_BOOT): a route written here looks the same
RTPROT_BOOT = 3
_NLMSGHDR = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")


@dataclass(frozen=True, slots=True)
class RouteChange:
    """One client route change: `tun` routes the address to the TUN device, `del` removes
    that route, `via` routes it to another host (`gateway`), `unvia` removes that route."""

    action: Literal["tun", "del", "via", "unvia"]
    address: bytes  # a client key: packed host address, or packed network + prefix length
    gateway: str = ""


def _rta(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def push_route_change(seq: int, change: RouteChange, ifindex: int) -> bytes:
    """The RTM_NEWROUTE (create or replace) / RTM_DELROUTE message for one change, in the
    main table, as `ip route replace|del <key> dev <tun>|via <gateway>` would send it."""
    net = ipaddress.ip_network(key_text(change.address), strict=False)
    family = socket.AF_INET if net.version == 4 else socket.AF_INET6
    delete = change.action in ("del", "unvia")
    via = change.action in ("via", "unvia")
    if delete:
        scope = RT_SCOPE_NOWHERE
    elif via or family == socket.AF_INET6:
        scope = RT_SCOPE_UNIVERSE
    else:
        scope = RT_SCOPE_LINK
    body = _RTMSG.pack(family, net.prefixlen, 0, 0, RT_TABLE_MAIN,
                       0 if delete else RTPROT_BOOT, scope, 0 if delete else RTN_UNICAST, 0)
    body += _rta(RTA_DST, net.network_address.packed)
    if via:
        gw = ipaddress.ip_address(change.gateway)
        if gw.version != net.version:
            raise TunError(f"route {net} via {gw}: address families differ")
        body += _rta(RTA_GATEWAY, gw.packed)
    else:
        body += _rta(RTA_OIF, struct.pack("=i", ifindex))
    flags = NLM_F_REQUEST | NLM_F_ACK
    if not delete:
        flags |= NLM_F_CREATE | NLM_F_REPLACE
    kind = RTM_DELROUTE if delete else RTM_NEWROUTE
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, flags, seq, 0) + body


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
        for i in range(0, len(changes), BATCH):
            msgs: list[bytes] = []
            what: dict[int, RouteChange] = {}
            for change in changes[i:i + BATCH]:
                self._seq = (self._seq + 1) & 0xFFFFFFFF
                try:
                    msgs.append(push_route_change(self._seq, change, ifindex))
                except (TunError, ValueError) as e:
                    failures.append(f"{_describe(change, self.tun)}: {e}")
                    continue
                what[self._seq] = change
            try:
                if msgs:
                    self.sock.sendall(b"".join(msgs))
                while what:
                    for seq, err in pull_acks(self.sock.recv(1 << 20)):
                        change_or_none = what.pop(seq, None)
                        if change_or_none is None or err == 0:
                            continue
                        if (err in (errno.ESRCH, errno.ENOENT)
                                and change_or_none.action in ("del", "unvia")):
                            continue
                        failures.append(f"{_describe(change_or_none, self.tun)}: "
                                        f"{os.strerror(err)}")
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
