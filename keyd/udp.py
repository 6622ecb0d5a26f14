"""keyd's UDP endpoints: IKE on VIP:500, and IKE behind the non-ESP marker on VIP:4500.

RFC 3948 §2.2 / RFC 7296 §2.23: on port 4500 an IKE message is preceded by four zero bytes
(the non-ESP marker); anything else there is ESP (a node's business, never keyd's) or a NAT
keepalive (one 0xFF byte). Those are dropped and counted here, so only IKE reaches the
worker. The marker itself is the IKE core's to strip and to add (keyd.ike frames datagrams
by port): `Inbound.data` is the UDP payload as received and `ike_message` the bare IKE
message inside; `send` writes what the core framed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

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


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, endpoint: IkeEndpoints, local: Address, natt: bool) -> None:
        self.endpoint = endpoint
        self.local = local
        self.natt = natt
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.endpoint.received(data, (str(addr[0]), int(addr[1])), self.local, self.natt)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for earlier sends (port unreachable...): nothing to do but count
        self.endpoint.on_drop("icmp_error")


class IkeEndpoints:
    """Both sockets. `on_message(Inbound)` gets every bare IKE message; `on_drop(reason)`
    every datagram dropped here. Replies go out with `send(message, local_port, remote)`."""

    def __init__(self, vip: str, ike_port: int, natt_port: int,
                 on_message: Callable[[Inbound], None],
                 on_drop: Callable[[str], None],
                 on_sent: Callable[[int], None] | None = None) -> None:
        self.vip = vip
        self.ike_port = ike_port
        self.natt_port = natt_port
        self.on_message = on_message
        self.on_drop = on_drop
        self.on_sent = on_sent
        self._by_port: dict[int, _Protocol] = {}

    @property
    def ports(self) -> tuple[int, int]:
        """The bound ports (as asked, or as the kernel chose when asked for 0)."""
        return (self._port_of(False), self._port_of(True))

    def _port_of(self, natt: bool) -> int:
        for port, proto in self._by_port.items():
            if proto.natt == natt:
                return port
        raise RuntimeError("endpoints are not open")

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        for port, natt in ((self.ike_port, False), (self.natt_port, True)):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                # IKE messages with certificates are large: room for bursts of them
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                sock.bind((self.vip, port))
            except OSError as exc:
                sock.close()
                self.close()
                raise OSError(exc.errno, f"cannot bind {self.vip}:{port}: {exc.strerror}") \
                    from None
            bound = sock.getsockname()[1]
            local = (self.vip, bound)
            proto = _Protocol(self, local, natt)
            await loop.create_datagram_endpoint(lambda proto=proto: proto, sock=sock)  # type: ignore[misc]
            self._by_port[bound] = proto

    def received(self, payload: bytes, src: Address, dst: Address, natt: bool) -> None:
        reason = drop_reason(payload, natt)
        if reason:
            self.on_drop(reason)
            return
        self.on_message(Inbound(payload, src, dst, natt))

    def send(self, payload: bytes, local_port: int, remote: Address) -> None:
        """Send a UDP payload as framed by the core (marker included on 4500)."""
        proto = self._by_port.get(local_port)
        if proto is None or proto.transport is None:
            # the core answers on the port the request came in on; unknown means a bug above
            self.on_drop("no_socket_for_port")
            return
        proto.transport.sendto(payload, remote)
        if self.on_sent:
            self.on_sent(local_port)

    def close(self) -> None:
        for proto in self._by_port.values():
            if proto.transport is not None:
                proto.transport.close()
        self._by_port.clear()
