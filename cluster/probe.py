"""The health probe: its wire format and the node side that answers it.

Probe (sprayer → node address:health_port, UDP):  b"IPSC-PROBE" + 8-byte nonce
Reply (node → sprayer):  b"IPSC-ALIVE" + the same nonce + state (b"R" ready, b"D" draining)
                         + node id (UTF-8, the rest of the datagram)

The sprayer sends probes and reads replies (`sprayer/health.py` tracks who is up); the node
answers them. Shared here so that neither daemon imports the other.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

PROBE = b"IPSC-PROBE"
ALIVE = b"IPSC-ALIVE"
NONCE_LEN = 8


class ProbeError(Exception):
    """A health reply that is not one (counted and dropped by the prober)."""


@dataclass(frozen=True, slots=True)
class ProbeReply:
    nonce: bytes
    #: True if the node says it is draining
    draining: bool
    node_id: str


def push_probe(nonce: bytes) -> bytes:
    if len(nonce) != NONCE_LEN:
        raise ValueError("probe nonce must be 8 bytes")
    return PROBE + nonce


def pull_probe(data: bytes) -> bytes:
    """The nonce of a probe (for the node's responder)."""
    if len(data) != len(PROBE) + NONCE_LEN or not data.startswith(PROBE):
        raise ProbeError("not a health probe")
    return data[len(PROBE):]


def push_reply(nonce: bytes, draining: bool, node_id: str) -> bytes:
    return ALIVE + nonce + (b"D" if draining else b"R") + node_id.encode()


def pull_reply(data: bytes) -> ProbeReply:
    head = len(ALIVE) + NONCE_LEN
    if len(data) < head + 2 or not data.startswith(ALIVE):
        raise ProbeError("not a health reply")
    state = data[head:head + 1]
    if state not in (b"R", b"D"):
        raise ProbeError(f"bad node state byte {state!r}")
    try:
        node_id = data[head + 1:].decode()
    except UnicodeDecodeError:
        raise ProbeError("node id is not UTF-8") from None
    return ProbeReply(data[len(ALIVE):head], state == b"D", node_id)


class HealthResponder:
    """The node side of the probe, for `cluster-node` (and the sprayer's tests): answers
    every valid probe on `sock` with this node's id and state; junk is counted and dropped."""

    def __init__(self, sock: socket.socket, node_id: str,
                 draining: Callable[[], bool] = lambda: False) -> None:
        self.sock = sock
        self.node_id = node_id
        self.draining = draining
        self.dropped = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def handle(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            nonce = pull_probe(data)
        except ProbeError:
            self.dropped += 1
            return
        with contextlib.suppress(OSError):
            self.sock.sendto(push_reply(nonce, self.draining(), self.node_id), addr)

    def start(self) -> None:
        self.sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            self.handle(data, addr)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
