"""The I/O of EAP-RADIUS: UDP to the RADIUS servers, retransmission and timeouts. The relay in
keyd/eap builds and checks the datagrams (in keyd, inside the IKE core); this only carries
them.

Each RADIUS round has its own connected UDP socket (an ephemeral port): the kernel filters
answers by the server's address, and the 256 RADIUS identifiers never run out between the
conversations of one keyd.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .eap import Authenticator, EapAction, RadiusServer, SendToRadius


@dataclass(frozen=True, slots=True)
class RadiusTiming:
    """`tries` sends of one request to one server, `timeout_s` apart (RFC 5080 §2.2.1 asks
    for retransmission of the same request; keyd's defaults are strongSwan's eap-radius')."""

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


async def radius_exchange(datagram: bytes, server: RadiusServer, identifier: int,
                          timing: RadiusTiming, accept: Callable[[bytes], bool]) -> bool:
    """Send `datagram` to `server` until `accept(reply)` takes an answer (False: it did not
    verify, keep waiting); False when every try timed out."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: _Round(identifier), remote_addr=(server.host, server.port))
    try:
        for _ in range(timing.tries):
            transport.sendto(datagram)
            deadline = loop.time() + timing.timeout_s
            while (left := deadline - loop.time()) > 0:
                with contextlib.suppress(TimeoutError):
                    if accept(await asyncio.wait_for(protocol.replies.get(), left)):
                        return True
        return False
    finally:
        transport.close()


async def relay_round(auth: Authenticator, action: SendToRadius,
                      servers: Sequence[RadiusServer], timing: RadiusTiming) -> EapAction:
    """Drive a keyd.eap Authenticator's RADIUS requests until it has something for the peer
    (or the conversation ended): what a caller holding the Authenticator itself needs."""
    current: EapAction = action
    answers: list[EapAction] = []

    def accept(reply: bytes) -> bool:
        answer = auth.radius_reply(reply)
        if answer is not None:
            answers.append(answer)
        return answer is not None

    while isinstance(current, SendToRadius):
        answers.clear()
        answered = await radius_exchange(current.datagram, servers[current.server],
                                         current.identifier, timing, accept)
        current = answers[0] if answered else auth.radius_timeout()
    return current
