"""Client /32 routes through rtnetlink directly (RFC 3549; linux/rtnetlink.h).

The client routes flip with every move, on the path of the client's return traffic; forking
`ip` for each flip costs milliseconds on a busy host. This sends RTM_NEWROUTE (replace) and
RTM_DELROUTE messages in batches on one NETLINK_ROUTE socket, opened in the router's network
namespace, and reads one acknowledgement per message. Unicast routes only: the sprayer's
IPv4 /32 routes via a gateway, in one table, tagged with one route protocol number; the
node's client routes (cluster.node.tun: IPv4 or IPv6, hosts or networks, to a device or a
gateway) are written with the same messages and the same batches (`send_batch`).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterable, Sequence

from cluster.host import DriverError, inside_netns

NETLINK_ROUTE = 0
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_REPLACE, NLM_F_CREATE = 0x1, 0x4, 0x100, 0x400
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
RT_TABLE_MAIN, RT_TABLE_UNSPEC = 254, 0
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE, RT_SCOPE_NOWHERE = 0, 255
#: messages per send: acknowledgements of a batch must fit the receive buffer
BATCH = 256

_NLMSGHDR = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")
_NLMSGERR = struct.Struct("=i")


def _rta(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def push_route(seq: int, delete: bool, dst: str, gateway: str | None, table: int | None,
               proto: int, *, prefix: int | None = None, oif: int = 0,
               scope: int | None = None) -> bytes:
    """One RTM_NEWROUTE (create or replace) / RTM_DELROUTE message for dst/prefix (IPv4 or
    IPv6; no prefix: the host route). `table` None: the main table, named in the header only
    (as `ip route` does); `gateway` (RTA_GATEWAY) and `oif` (RTA_OIF, when not 0) go in as
    given; `scope` by default nowhere for a delete, universe otherwise. ValueError for an
    address that is none, or a gateway of the other family."""
    addr = ipaddress.ip_address(dst)
    family = socket.AF_INET if addr.version == 4 else socket.AF_INET6
    if scope is None:
        scope = RT_SCOPE_NOWHERE if delete else RT_SCOPE_UNIVERSE
    rt_table = RT_TABLE_MAIN if table is None else table if table < 256 else RT_TABLE_UNSPEC
    body = _RTMSG.pack(family, addr.max_prefixlen if prefix is None else prefix, 0, 0,
                       rt_table, proto, scope, 0 if delete else RTN_UNICAST, 0)
    body += _rta(RTA_DST, addr.packed)
    if table is not None:
        body += _rta(RTA_TABLE, struct.pack("=I", table))
    if gateway is not None:
        gw = ipaddress.ip_address(gateway)
        if gw.version != addr.version:
            raise ValueError(f"route {dst} via {gateway}: address families differ")
        body += _rta(RTA_GATEWAY, gw.packed)
    if oif:
        body += _rta(RTA_OIF, struct.pack("=i", oif))
    flags = NLM_F_REQUEST | NLM_F_ACK
    if not delete:
        flags |= NLM_F_CREATE | NLM_F_REPLACE
    kind = RTM_DELROUTE if delete else RTM_NEWROUTE
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, flags, seq, 0) + body


def pull_acks(data: bytes) -> list[tuple[int, int]]:
    """(seq, errno) of every NLMSG_ERROR in a datagram (errno 0 is an acknowledgement)."""
    out = []
    off = 0
    while off + _NLMSGHDR.size <= len(data):
        length, kind, _, seq, _ = _NLMSGHDR.unpack_from(data, off)
        if length < _NLMSGHDR.size or off + length > len(data):
            raise DriverError("netlink: truncated message")
        if kind == NLMSG_ERROR:
            (err,) = _NLMSGERR.unpack_from(data, off + _NLMSGHDR.size)
            out.append((seq, -err))
        off += (length + 3) & ~3
    return out


def open_route_socket(netns: str | None = None) -> socket.socket:
    """A bound NETLINK_ROUTE socket in `netns` (None: this process's namespace), with a 5 s
    time-out on its acknowledgements; DriverError if it cannot be had."""
    try:
        with inside_netns(netns):
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        sock.bind((0, 0))
        sock.settimeout(5.0)
    except OSError as e:
        raise DriverError(f"rtnetlink socket: {e}") from None
    return sock


def send_batch(sock: socket.socket, msgs: Sequence[tuple[int, str, bytes, bool]]
               ) -> list[str]:
    """Send (seq, what, message, is a delete) route messages on `sock`, BATCH at a time, and
    read one acknowledgement each; returns "what: reason" for every refused one (a delete of
    a route that is already gone is no refusal). OSError if the socket fails, DriverError
    if an answer is truncated."""
    failures: list[str] = []
    for i in range(0, len(msgs), BATCH):
        chunk = msgs[i:i + BATCH]
        what = {seq: (text, delete) for seq, text, _, delete in chunk}
        sock.sendall(b"".join(m for _, _, m, _ in chunk))
        while what:
            for seq, err in pull_acks(sock.recv(1 << 20)):
                got = what.pop(seq, None)
                if got is None or err == 0:
                    continue
                if err in (errno.ESRCH, errno.ENOENT) and got[1]:
                    continue
                failures.append(f"{got[0]}: {os.strerror(err)}")
    return failures


class RouteSocket:
    """A NETLINK_ROUTE socket in one network namespace, for batches of /32 route changes."""

    def __init__(self, netns: str | None = None) -> None:
        self.sock = open_route_socket(netns)
        self._seq = 0

    def apply(self, replace: Iterable[tuple[str, str]], delete: Iterable[str], table: int,
              proto: int) -> None:
        """Replace (dst, gateway) routes and delete dst routes; a delete of a route that is
        already gone is fine; any other refusal is a DriverError naming the route."""
        msgs: list[tuple[int, str, bytes, bool]] = []
        for dst in delete:
            self._seq += 1
            msgs.append((self._seq, f"del {dst}",
                         push_route(self._seq, True, dst, None, table, proto), True))
        for dst, gw in replace:
            self._seq += 1
            msgs.append((self._seq, f"{dst} via {gw}",
                         push_route(self._seq, False, dst, gw, table, proto), False))
        try:
            failures = send_batch(self.sock, msgs)
        except OSError as e:
            raise DriverError(f"rtnetlink: {e}") from None
        if failures:
            raise DriverError(f"route changes refused: {'; '.join(failures[:5])}"
                              + (f" (+{len(failures) - 5} more)" if len(failures) > 5 else ""))

    def close(self) -> None:
        self.sock.close()


def table_id(name: str) -> int:
    """Routing table number for "main" or a number."""
    if name == "main":
        return RT_TABLE_MAIN
    try:
        return int(name)
    except ValueError:
        raise DriverError(f"routing table must be 'main' or a number: {name!r}") from None
