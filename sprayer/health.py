"""Node health: the probe wire format and a pure, damped up/down tracker.

Probe (sprayer → node address:health_port, UDP):  b"IPSC-PROBE" + 8-byte nonce
Reply (node → sprayer):  b"IPSC-ALIVE" + the same nonce + state (b"R" ready, b"D" draining)
                         + node id (UTF-8, the rest of the datagram)

A node is down after `misses` consecutive unanswered probes, or at once when its lease is lost
(its nodes/ record disappears). Damping: a node that went down comes back only after `rise`
consecutive answers *and* a hold-down that doubles with each recent flap (capped), so a node
that bounces does not bounce its clients. No sockets and no clock here: `now` is passed in.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

PROBE = b"IPSC-PROBE"
ALIVE = b"IPSC-ALIVE"
NONCE_LEN = 8


class RemoteProtocolError(Exception):
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
        raise RemoteProtocolError("not a health probe")
    return data[len(PROBE):]


def push_reply(nonce: bytes, draining: bool, node_id: str) -> bytes:
    return ALIVE + nonce + (b"D" if draining else b"R") + node_id.encode()


def pull_reply(data: bytes) -> ProbeReply:
    head = len(ALIVE) + NONCE_LEN
    if len(data) < head + 2 or not data.startswith(ALIVE):
        raise RemoteProtocolError("not a health reply")
    state = data[head:head + 1]
    if state not in (b"R", b"D"):
        raise RemoteProtocolError(f"bad node state byte {state!r}")
    try:
        node_id = data[head + 1:].decode()
    except UnicodeDecodeError:
        raise RemoteProtocolError("node id is not UTF-8") from None
    return ProbeReply(data[len(ALIVE):head], state == b"D", node_id)


@dataclass(slots=True)
class _Node:
    alive: bool = True
    misses: int = 0
    streak: int = 0
    down_at: float | None = None
    flaps: list[float] = field(default_factory=list)
    draining: bool = False


class HealthTracker:
    """Up/down verdicts per node from probe results and lease presence.

    `misses`: consecutive missed probes that make a node down (default 3).
    `rise`: consecutive answers a down node needs to come back.
    `hold_down_s`: minimum time down; doubled for each further flap within `flap_window_s`,
    at most `max_hold_down_s`.
    """

    def __init__(self, misses: int = 3, rise: int = 3, hold_down_s: float = 1.0,
                 max_hold_down_s: float = 30.0, flap_window_s: float = 120.0) -> None:
        self.misses = misses
        self.rise = rise
        self.hold_down_s = hold_down_s
        self.max_hold_down_s = max_hold_down_s
        self.flap_window_s = flap_window_s
        self._nodes: dict[str, _Node] = {}

    def add(self, node_id: str) -> None:
        """A node with a lease appeared: presumed alive until probes say otherwise."""
        self._nodes.setdefault(node_id, _Node())

    def lease_lost(self, node_id: str, now: float) -> None:
        """Its nodes/ record is gone: down at once, and forgotten as a member."""
        n = self._nodes.pop(node_id, None)
        if n is not None and n.alive:
            n.flaps.append(now)

    def answered(self, node_id: str, now: float, draining: bool = False) -> None:
        n = self._nodes.get(node_id)
        if n is None:
            return
        n.misses = 0
        n.streak += 1
        n.draining = draining
        if not n.alive and n.streak >= self.rise and now >= self._up_after(n):
            n.alive = True

    def missed(self, node_id: str, now: float) -> None:
        n = self._nodes.get(node_id)
        if n is None:
            return
        n.streak = 0
        n.misses += 1
        if n.alive and n.misses >= self.misses:
            n.alive = False
            n.down_at = now
            n.flaps = [t for t in n.flaps if now - t < self.flap_window_s] + [now]

    def _up_after(self, n: _Node) -> float:
        extra = max(0, len(n.flaps) - 1)
        hold = min(self.max_hold_down_s, self.hold_down_s * (2 ** extra))
        return (n.down_at or 0.0) + hold

    def alive(self, node_id: str) -> bool:
        n = self._nodes.get(node_id)
        return n is not None and n.alive

    def draining(self, node_id: str) -> bool:
        n = self._nodes.get(node_id)
        return n is not None and n.draining

    def nodes(self) -> list[str]:
        return sorted(self._nodes)


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
        except RemoteProtocolError:
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
