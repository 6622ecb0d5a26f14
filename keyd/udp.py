"""keyd's UDP endpoints: IKE on VIP:500, and IKE behind the non-ESP marker on VIP:4500.

RFC 3948 §2.2 / RFC 7296 §2.23: on port 4500 an IKE message is preceded by four zero bytes
(the non-ESP marker); anything else there is ESP (a node's business, never keyd's) or a NAT
keepalive (one 0xFF byte). Those are dropped and counted here, so only IKE reaches the
worker. The marker itself is the IKE core's to strip and to add (keyd.ike frames datagrams
by port): `Inbound.data` is the UDP payload as received and `ike_message` the bare IKE
message inside; `send` writes what the core framed.

Each socket is drained in batches (`DRAIN_MAX` datagrams a wake-up: far less loop overhead
per datagram than one each), and a batch hands on messages of IKE SAs and requests that show
a cookie before new IKE_SA_INITs; when keyd is behind, only a share of a batch's new
IKE_SA_INITs is handed on, the rest dropped and counted (`overload`): under a flood from
spoofed sources, what is lost is the flood's kind of work, not a real client's next step.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

NON_ESP_MARKER = b"\x00\x00\x00\x00"
IKE_HEADER_BYTES = 28

log = logging.getLogger("keyd.udp")

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Inbound:
    """One datagram carrying IKE: the UDP payload, the client's and our address."""

    data: bytes
    src: Address
    dst: Address
    natt: bool = False

    @property
    def ike_message(self) -> bytes:
        return self.data[len(NON_ESP_MARKER):] if self.natt else self.data

    @property
    def ike_offset(self) -> int:
        """Where the IKE message starts in `data`."""
        return len(NON_ESP_MARKER) if self.natt else 0


def drop_reason(payload: bytes, natt: bool) -> str:
    """Why a datagram received on 500 (natt False) or 4500 is not IKE; "" if it is."""
    if natt:
        if payload == b"\xff":
            return "natt_keepalive"
        if len(payload) < 4 or payload[:4] != NON_ESP_MARKER:
            return "esp_on_natt_port"
        payload = payload[4:]
    if len(payload) < IKE_HEADER_BYTES:
        return "short"
    return ""


#: datagrams read from a socket in one go (then the loop runs its other work)
DRAIN_MAX = 256
#: keyd is behind when this many drains in a row found a full batch: a backlog the socket
#: buffer may not hold for long, not a burst (datagrams come in bursts through veths and
#: the kernel's batching; one full batch says little)
BEHIND_AFTER = 3
#: while behind, only `quota` of a batch's new IKE_SA_INIT requests without a cookie are
#: handed on, the rest dropped, counted `overload`; the quota shrinks by this factor each
#: drain keyd is behind and grows by QUOTA_STEP each drain it is not (additive increase,
#: multiplicative decrease: it settles where keyd reads everything that comes and answers
#: what it can). Requests with a cookie and messages of existing IKE SAs are never shed.
QUOTA_DECREASE = 0.8
QUOTA_STEP = 8
QUOTA_MIN = 4
#: which new IKE_SA_INITs a quota keeps: those from the source prefixes (IPv4 /24, IPv6
#: /48) that sent the fewest in the current window — a flood from a few networks is shed
#: first, a client from elsewhere kept; sources spread over the whole address space are
#: shed evenly. The counts are kept for this long, for at most PREFIXES_MAX prefixes.
PREFIX_WINDOW_S = 1.0
PREFIXES_MAX = 65536

_ZERO_SPI = bytes(8)
_IKE_SA_INIT = 34
_NOTIFY = 41
_COOKIE = (16390).to_bytes(2, "big")


#: what `init_kind` says of a datagram
IKE_SA_MESSAGE, INIT_WITH_COOKIE, NEW_INIT = 0, 1, 2


def init_kind(payload: bytes, offset: int) -> int:
    """NEW_INIT: an IKE_SA_INIT request (responder SPI zero) that does not open with a
    COOKIE notify (RFC 7296 §2.6), what a flood from spoofed sources is made of;
    INIT_WITH_COOKIE: one that does; IKE_SA_MESSAGE: anything else. Header bytes only."""
    if payload[offset + 8:offset + 16] != _ZERO_SPI or payload[offset + 18] != _IKE_SA_INIT:
        return IKE_SA_MESSAGE
    first = offset + IKE_HEADER_BYTES
    cookie = payload[offset + 16] == _NOTIFY and payload[first + 6:first + 8] == _COOKIE
    return INIT_WITH_COOKIE if cookie else NEW_INIT


def source_prefix(ip: str) -> str:
    """The /24 of an IPv4 address, the /48 of an IPv6 one (as text, cheaply)."""
    if ":" not in ip:
        return ip.rpartition(".")[0]
    return ipaddress.ip_address(ip).exploded[:14]


class _Socket:
    """One bound socket, read by the loop's reader callback in batches."""

    def __init__(self, sock: socket.socket, local: Address, natt: bool) -> None:
        self.sock = sock
        self.local = local
        self.natt = natt
        self.quota = float(DRAIN_MAX)   # new IKE_SA_INITs handed on of a full batch
        self.full = 0                   # drains in a row that found a full batch
        self.by_prefix: dict[str, int] = {}   # new IKE_SA_INITs per source prefix, this window
        self.window_ends = 0.0


class IkeEndpoints:
    """Both sockets. `on_message(Inbound)` gets every bare IKE message; `on_drop(reason)`
    every datagram dropped here (`on_drop(reason, count)` for many at once). Replies go out
    with `send(message, local_port, remote)`.
    `on_new_init(payload, src, dst)`, if given, sees each IKE_SA_INIT request first: the
    payload it returns is sent back at once (a stateless answer); None: on to on_message."""

    def __init__(self, vip: str, ike_port: int, natt_port: int,
                 on_message: Callable[[Inbound], None],
                 on_drop: Callable[..., None],
                 on_sent: Callable[[int], None] | None = None,
                 on_new_init: Callable[[bytes, Address, Address], bytes | None] | None = None,
                 ) -> None:
        self.vip = vip
        self.ike_port = ike_port
        self.natt_port = natt_port
        self.on_message = on_message
        self.on_drop = on_drop
        self.on_sent = on_sent
        self.on_new_init = on_new_init
        self._by_port: dict[int, _Socket] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def ports(self) -> tuple[int, int]:
        """The bound ports (as asked, or as the kernel chose when asked for 0)."""
        return (self._port_of(False), self._port_of(True))

    def _port_of(self, natt: bool) -> int:
        for port, bound in self._by_port.items():
            if bound.natt == natt:
                return port
        raise RuntimeError("endpoints are not open")

    async def open(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        for port, natt in ((self.ike_port, False), (self.natt_port, True)):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                # IKE messages with certificates are large: room for bursts of them
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                sock.bind((self.vip, port))
                sock.setblocking(False)
            except OSError as exc:
                sock.close()
                self.close()
                raise OSError(exc.errno, f"cannot bind {self.vip}:{port}: {exc.strerror}") \
                    from None
            port = sock.getsockname()[1]
            bound = _Socket(sock, (self.vip, port), natt)
            self._by_port[port] = bound
            loop.add_reader(sock.fileno(), self._drain, bound)

    def _drain(self, bound: _Socket) -> None:
        """Read what waits, up to DRAIN_MAX datagrams, then hand it on: messages of IKE
        SAs and requests with a cookie first, then new IKE_SA_INITs — only `quota` of
        those when keyd is behind (BEHIND_AFTER full batches in a row: rather than lose
        any datagram in the socket buffer, it drops here the cheapest to lose; a real
        client retransmits, and its cookie-bearing retry is not shed)."""
        batch: list[tuple[bytes, Address]] = []
        recvfrom = bound.sock.recvfrom
        for _ in range(DRAIN_MAX):
            try:
                data, addr = recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:   # an ICMP error for an earlier send: nothing to do but count
                self.on_drop("icmp_error")
                continue
            batch.append((data, (str(addr[0]), int(addr[1]))))
        bound.full = bound.full + 1 if len(batch) == DRAIN_MAX else 0
        behind = bound.full >= BEHIND_AFTER
        offset = len(NON_ESP_MARKER) if bound.natt else 0
        inits: list[tuple[bytes, Address]] = []
        new: list[tuple[bytes, Address]] = []
        for data, src in batch:
            reason = drop_reason(data, bound.natt)
            if reason:
                self.on_drop(reason)
                continue
            kind = init_kind(data, offset)
            if kind == IKE_SA_MESSAGE:
                self.on_message(Inbound(data, src, bound.local, bound.natt))
            else:
                (inits if kind == INIT_WITH_COOKIE else new).append((data, src))
        if new:
            new = self._by_fewest(bound, new) if behind else self._count(bound, new)
        if behind:
            bound.quota = max(QUOTA_MIN, bound.quota * QUOTA_DECREASE)
            quota = int(bound.quota)
        else:
            if not bound.full:
                bound.quota = min(DRAIN_MAX, bound.quota + QUOTA_STEP)
            quota = len(new)
        for data, src in inits + new[:quota]:
            self._init(bound, data, src)
        if len(new) > quota:
            self.on_drop("overload", len(new) - quota)

    @staticmethod
    def _count(bound: _Socket, new: list[tuple[bytes, Address]]) -> list[tuple[bytes, Address]]:
        """Count the new IKE_SA_INITs of each source prefix in the current window."""
        now = time.monotonic()
        if now >= bound.window_ends or len(bound.by_prefix) > PREFIXES_MAX:
            bound.by_prefix.clear()
            bound.window_ends = now + PREFIX_WINDOW_S
        counts = bound.by_prefix
        for _, src in new:
            prefix = source_prefix(src[0])
            counts[prefix] = counts.get(prefix, 0) + 1
        return new

    def _by_fewest(self, bound: _Socket,
                   new: list[tuple[bytes, Address]]) -> list[tuple[bytes, Address]]:
        """Counted, then those of the quietest source prefixes first (the sort is stable:
        in arrival order within a prefix)."""
        self._count(bound, new)
        counts = bound.by_prefix
        return sorted(new, key=lambda item: counts.get(source_prefix(item[1][0]), 0))

    def _init(self, bound: _Socket, data: bytes, src: Address) -> None:
        answer = self.on_new_init(data, src, bound.local) if self.on_new_init else None
        if answer is None:
            self.on_message(Inbound(data, src, bound.local, bound.natt))
        else:
            self._sendto(bound, answer, src)

    def send(self, payload: bytes, local_port: int, remote: Address) -> None:
        """Send a UDP payload as framed by the core (marker included on 4500)."""
        bound = self._by_port.get(local_port)
        if bound is None:
            # the core answers on the port the request came in on; unknown means a bug above
            self.on_drop("no_socket_for_port")
            return
        self._sendto(bound, payload, remote)

    def _sendto(self, bound: _Socket, payload: bytes, remote: Address) -> None:
        try:
            bound.sock.sendto(payload, remote)
        except (BlockingIOError, InterruptedError):
            self.on_drop("send_buffer_full")   # lost as on the wire: the peer retransmits
            return
        except OSError:
            self.on_drop("send_failed")
            return
        if self.on_sent:
            self.on_sent(bound.local[1])

    def close(self) -> None:
        for bound in self._by_port.values():
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(bound.sock.fileno())
            bound.sock.close()
        self._by_port.clear()
