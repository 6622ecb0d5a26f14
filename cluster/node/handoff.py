"""Planned hand-off between two nodes: the new owner says it is ready before the old owner
writes its final counters.

Why. Once the old owner's `final` seq record is in etcd, two things send the client's return
traffic to the new owner: the old owner forwards what reaches it (`ip route ... via <new>`),
and the sprayer flips the router's /32 route. A packet that reaches the new owner before its
own route to its TUN exists follows the new owner's default route back to the router, which
sends it to one of the two nodes again, until its TTL runs out: a lost ping (seen as
`IcmpOutTimeExcds` on the router). So the order is made explicit:

1. new owner: on the hand-off assignment, hold the client's outbound packets in the data
   path and route the client's addresses to its TUN; once both are in place, send `READY`
   (this module's datagram) to the old owner's health port, again every `RESEND_S` until
   its take-over is done;
2. old owner: on the hand-off assignment, stop sending and hold; write the final record only
   once `READY` for that client and epoch came from the new owner (or `WAIT_S` passed: then
   it writes anyway, as before this message existed, and says so);
3. the sprayer flips on the final record, the new owner installs it and sends what it held.

A forged `READY` can only make an old owner write its final record early, which is what it did
without it: the record itself stays guarded by the assignment (compare-and-swap).

Wire format (UDP, new owner → old owner's health port, next to the sprayer's probes):
    b"IPSC-READY" | version (1 byte, 1) | epoch (8 bytes, big endian)
    | length (1 byte) + IKE SA id (ASCII) | length (1 byte) + sender's node id (UTF-8)

Sans-I/O: no sockets, no clock (`now` is passed in).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

READY = b"IPSC-READY"
VERSION = 1
WAIT_S = 0.5  # how long an old owner waits for READY before writing its final record anyway
#             (the default of the node's `ready_wait_ms`)
RESEND_S = 0.1  # READY is sent again this often while the take-over waits (UDP may drop it)
REMEMBER_S = 2.0  # a READY that came before its assignment is kept this long


class HandoffError(Exception):
    """A datagram on the health port that is not a valid READY (counted and dropped)."""


@dataclass(frozen=True, slots=True)
class Ready:
    """The new owner of a client is ready for its traffic."""

    ike_sa_id: str  # the client (its IKE SA id, as in assign/<ike-sa-id>)
    epoch: int  # the hand-off assignment's epoch
    node_id: str  # the sender: the new owner


def is_ready_message(data: bytes) -> bool:
    return data.startswith(READY)


def push_ready(msg: Ready) -> bytes:
    ike = msg.ike_sa_id.encode("ascii")
    node = msg.node_id.encode()
    if not 0 < len(ike) < 256 or not 0 < len(node) < 256:
        raise ValueError("IKE SA id and node id must be 1..255 bytes")
    if not 0 <= msg.epoch < 1 << 64:
        raise ValueError("epoch out of range")
    return (READY + bytes([VERSION]) + msg.epoch.to_bytes(8, "big")
            + bytes([len(ike)]) + ike + bytes([len(node)]) + node)


def pull_ready(data: bytes) -> Ready:
    if not data.startswith(READY):
        raise HandoffError("not a READY message")
    buf = memoryview(data)[len(READY):]
    if len(buf) < 1 + 8 + 1 or buf[0] != VERSION:
        raise HandoffError("READY: truncated or unknown version")
    epoch = int.from_bytes(buf[1:9], "big")
    pos = 9
    fields = []
    for _ in range(2):
        if pos >= len(buf) or buf[pos] == 0 or pos + 1 + buf[pos] > len(buf):
            raise HandoffError("READY: bad length")
        fields.append(bytes(buf[pos + 1:pos + 1 + buf[pos]]))
        pos += 1 + buf[pos]
    if pos != len(buf):
        raise HandoffError("READY: trailing bytes")
    try:
        ike, node = fields[0].decode("ascii"), fields[1].decode()
    except UnicodeDecodeError:
        raise HandoffError("READY: ids are not text") from None
    return Ready(ike, epoch, node)


T = TypeVar("T")


@dataclass(slots=True)
class _Waiting(Generic[T]):
    epoch: int
    new_owner: str
    deadline: float
    write: T


@dataclass(slots=True)
class FinalGate(Generic[T]):
    """The old owner's side: final-record writes waiting for the new owner's READY.

    `wait` parks a write (any object; the caller runs it), `ready` and `due` hand back the
    writes that may go now: on the matching READY, or once `WAIT_S` passed. A READY that
    arrives before the hand-off assignment does (the new owner was quicker) is remembered
    for `REMEMBER_S`."""

    wait_s: float = WAIT_S
    waiting: dict[str, _Waiting[T]] = field(default_factory=dict)
    early: dict[tuple[str, int, str], float] = field(default_factory=dict)
    timeouts: int = 0  # finals written without READY

    def wait(self, ike_sa_id: str, epoch: int, new_owner: str, write: T, now: float) -> bool:
        """Park `write` until READY(ike_sa_id, epoch) from `new_owner`; False if that READY
        came already (then the caller writes now)."""
        if self.early.pop((ike_sa_id, epoch, new_owner), None) is not None:
            return False
        self.waiting[ike_sa_id] = _Waiting(epoch, new_owner, now + self.wait_s, write)
        return True

    def ready(self, msg: Ready, now: float) -> T | None:
        """A READY arrived: the write it releases, if one waits for it."""
        w = self.waiting.get(msg.ike_sa_id)
        if w is not None and w.epoch == msg.epoch and w.new_owner == msg.node_id:
            del self.waiting[msg.ike_sa_id]
            return w.write
        if w is None or w.epoch < msg.epoch:
            self._forget_early(now)
            self.early[(msg.ike_sa_id, msg.epoch, msg.node_id)] = now + REMEMBER_S
        return None

    def due(self, now: float) -> list[T]:
        """Writes whose wait ran out (each counted in `timeouts`)."""
        out = [k for k, w in self.waiting.items() if now >= w.deadline]
        self.timeouts += len(out)
        self._forget_early(now)
        return [self.waiting.pop(k).write for k in out]

    def drop(self, ike_sa_id: str) -> T | None:
        """Stop waiting for this client (its assignment moved on); the parked write, if any."""
        w = self.waiting.pop(ike_sa_id, None)
        return None if w is None else w.write

    def _forget_early(self, now: float) -> None:
        for key in [k for k, until in self.early.items() if now >= until]:
            del self.early[key]

