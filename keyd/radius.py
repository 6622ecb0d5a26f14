"""The I/O of EAP-RADIUS: UDP to the RADIUS servers, retransmission and timeouts. The relay in
keyd/eap builds and checks the datagrams; this only carries them.

Each RADIUS round has its own connected UDP socket (an ephemeral port): the kernel filters
answers by the server's address, and the 256 RADIUS identifiers never run out between the
conversations of one keyd.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

from .eap import Authenticator, EapAction, RadiusServer, SendToRadius


@dataclass(frozen=True, slots=True)
class RadiusTiming:
    """RFC 5080 §2.2.1 style: `tries` sends of one request per server, `timeout_s` apart."""

    timeout_s: float = 2.0
    tries: int = 3


class _Round(asyncio.DatagramProtocol):
    def __init__(self, identifier: int) -> None:
        self.identifier = identifier
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) >= 2 and data[1] == self.identifier:
            self.replies.put_nowait(data)

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable: keep waiting
        pass


async def relay_round(auth: Authenticator, action: SendToRadius,
                      servers: Sequence[RadiusServer], timing: RadiusTiming) -> EapAction:
    """Send `action` and what follows from it until the relay has something for the peer (or
    the conversation ended): retransmits, moves on to the next server on a timeout."""
    current: EapAction = action
    loop = asyncio.get_running_loop()
    while isinstance(current, SendToRadius):
        server = servers[current.server]
        transport, protocol = await loop.create_datagram_endpoint(
            lambda ident=current.identifier: _Round(ident),  # type: ignore[misc]
            remote_addr=(server.host, server.port))
        try:
            answer = await _exchange(auth, current, transport, protocol, timing)
        finally:
            transport.close()
        current = auth.radius_timeout() if answer is None else answer
    return current


async def _exchange(auth: Authenticator, action: SendToRadius,
                    transport: asyncio.DatagramTransport, protocol: _Round,
                    timing: RadiusTiming) -> EapAction | None:
    for _ in range(timing.tries):
        transport.sendto(action.datagram)
        deadline = asyncio.get_running_loop().time() + timing.timeout_s
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            with contextlib.suppress(TimeoutError):
                reply = await asyncio.wait_for(protocol.replies.get(), left)
                answer = auth.radius_reply(reply)
                if answer is not None:  # None: did not verify, keep waiting
                    return answer
    return None
