"""Sequence-counter bookkeeping of the owner: checkpoints, send limits and take-over.

Sans-I/O. The repository update procedure of DESIGN.md: the owner of a client writes its SAs'
counters to `seq/<spi>` when a counter advanced by `every_packets` (D) or `every_ms` (T)
passed, batched; a node that takes a client over continues from those records.

Why the jump is safe. The data path never sends a sequence number at or above
`send_limit = acknowledged checkpoint out_seq + J` (see `Checkpointer.send_limit`). A new
owner reads a checkpoint at least as new as the last one acknowledged to the old owner (a
write etcd applied but whose answer was lost only makes it newer), and starts at its out_seq +
J, so it sends above anything the old owner ever could — whatever the timing, even with etcd
down (the old owner then stops at its limit instead of running into the new owner's range).
A new owner's own start is not in etcd yet: it is written (forced checkpoint) before the
first packet, because until then the acknowledged record is the one it started from and its
limit is exactly its start. Only an exact take-over (the `final` record is the start) sends
at once.
Checkpoint writes are guarded by the assignment's mod_revision: a fenced owner cannot
overwrite a newer owner's record with older numbers.

Replay exposure. Inbound, the new owner's window starts at the checkpointed in_highest and
bitmap. Packets the client sent after that checkpoint were accepted by the old owner and are
unknown to the new one: an attacker who recorded them can replay them once to the new owner,
at most the packets of one checkpoint period (< D packets or T ms of traffic; more while etcd
writes failed). The window cannot be jumped like the outbound counter: that would drop the
client's genuine packets. A planned hand-off (`final` record) has it only for the packets
the old owner still decrypts after writing its final record (until the router flips, 15-35
ms of traffic): they are above the final's in_highest, so each can be replayed once to the
new owner (docs/node.md, "Replay exposure").
"""

from __future__ import annotations

from dataclasses import dataclass

from cluster.esp import SaCounters
from cluster.store import Assignment, SeqRecord


@dataclass(frozen=True, slots=True)
class Traffic:
    """Inner packets and bytes an SA carried, decrypted (in) and encrypted (out)."""

    packets_in: int = 0
    packets_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0

    def __add__(self, other: Traffic) -> Traffic:
        return Traffic(self.packets_in + other.packets_in, self.packets_out + other.packets_out,
                       self.bytes_in + other.bytes_in, self.bytes_out + other.bytes_out)

    def __sub__(self, other: Traffic) -> Traffic:
        return Traffic(self.packets_in - other.packets_in, self.packets_out - other.packets_out,
                       self.bytes_in - other.bytes_in, self.bytes_out - other.bytes_out)

    @classmethod
    def of(cls, seq: SeqRecord | None) -> Traffic:
        """What a seq record says the SA carried before (zero if it does not say)."""
        if seq is None:
            return cls()
        return cls(seq.packets_in or 0, seq.packets_out or 0, seq.bytes_in or 0,
                   seq.bytes_out or 0)

    def clamped(self) -> Traffic:
        return Traffic(*(max(0, n) for n in (self.packets_in, self.packets_out,
                                             self.bytes_in, self.bytes_out)))


def seq_record(spi: int, node_id: str, epoch: int, counters: SaCounters, kind: str,
               wall: float, traffic: Traffic | None) -> SeqRecord:
    """The `seq/<spi>` record of these counters (and traffic, when known)."""
    t = traffic.clamped() if traffic is not None else None
    return SeqRecord(spi, node_id, epoch, counters.out_seq, counters.in_highest,
                     counters.in_bitmap, "final" if kind == "final" else "checkpoint", wall,
                     t.packets_in if t else None, t.packets_out if t else None,
                     t.bytes_in if t else None, t.bytes_out if t else None)


@dataclass(frozen=True, slots=True)
class TakeOver:
    """Where a new owner starts one SA."""

    counters: SaCounters
    exact: bool  # True: installed from the old owner's final record


def take_over(seq: SeqRecord | None, assignment: Assignment, jump: int) -> TakeOver:
    """The counters a node starts from when `assignment` makes it the owner."""
    if (seq is not None and seq.kind == "final" and seq.epoch == assignment.epoch
            and seq.owner == assignment.previous_node):
        return TakeOver(SaCounters(seq.out_seq, seq.in_highest, seq.in_bitmap), True)
    if seq is None:
        # never checkpointed: an earlier owner may still have sent up to J - 1 packets
        return TakeOver(SaCounters(jump, 0, 0), False)
    return TakeOver(SaCounters(seq.out_seq + jump, seq.in_highest, seq.in_bitmap), False)


def is_final_for(seq: SeqRecord | None, assignment: Assignment) -> bool:
    """Whether `seq` is the old owner's exact hand-off record for this assignment."""
    return take_over(seq, assignment, 0).exact


@dataclass(slots=True)
class _Track:
    ike_sa_id: str
    epoch: int
    acked: SaCounters  # last counters etcd acknowledged (or the take-over start)
    acked_at_s: float
    in_flight: SaCounters | None = None
    force: bool = False  # write even if nothing moved (the take-over start is not in etcd)


@dataclass(frozen=True, slots=True)
class Due:
    """One checkpoint to write: the record and the assignment it is guarded by."""

    record: SeqRecord
    ike_sa_id: str


class Checkpointer:
    """Which owned SAs need a checkpoint now, and each SA's send limit."""

    def __init__(self, node_id: str, every_packets: int, every_ms: int, jump: int) -> None:
        if jump <= every_packets:
            raise ValueError("the jump must exceed the checkpoint interval in packets")
        self.node_id = node_id
        self.every_packets = every_packets
        self.every_s = every_ms / 1000
        self.jump = jump
        self._tracks: dict[int, _Track] = {}
        #: spi -> (out_seq, in_highest, in_bitmap) last acknowledged; lets the data path skip
        #: SAs that did not change without building their counters (one tuple per SA and
        #: tick). The bitmap is in it so that a change of the window alone (a packet that
        #: arrived out of order, below in_highest) is still written, after T (`due`).
        self.marks: dict[int, tuple[int, int, int]] = {}

    def own(self, spi: int, ike_sa_id: str, epoch: int, start: SaCounters,
            persisted: SaCounters | None, now: float) -> None:
        """Start checkpointing `spi`, which now sends from `start`; `persisted` is the record
        in etcd it was derived from (None: there was none). Until `start` itself is
        acknowledged the send limit stays at persisted + J, which is where `start` is when it
        came from a jump: the SA waits for that first write."""
        acked = persisted if persisted is not None else SaCounters(0, 0, 0)
        self._tracks[spi] = _Track(ike_sa_id, epoch, acked, now, force=start != acked)
        self.marks[spi] = (acked.out_seq, acked.in_highest, acked.in_bitmap)

    def disown(self, spi: int) -> None:
        self._tracks.pop(spi, None)
        self.marks.pop(spi, None)

    def forced(self) -> set[int]:
        """SAs whose next checkpoint is due whether or not they moved."""
        return {spi for spi, t in self._tracks.items() if t.force}

    def owned(self) -> set[int]:
        return set(self._tracks)

    def send_limit(self, spi: int) -> int:
        t = self._tracks.get(spi)
        return 0 if t is None else t.acked.out_seq + self.jump

    def lag(self, spi: int, current: SaCounters) -> int:
        """Packets (out or in) the SA is ahead of its acknowledged checkpoint."""
        t = self._tracks.get(spi)
        if t is None:
            return 0
        return max(current.out_seq - t.acked.out_seq, current.in_highest - t.acked.in_highest)

    def oldest_unacked_s(self, now: float) -> float:
        """Age of the oldest acknowledged checkpoint among SAs with a write outstanding."""
        ages = [now - t.acked_at_s for t in self._tracks.values() if t.in_flight is not None]
        return max(ages, default=0.0)

    def queued(self) -> int:
        """Checkpoints written but not yet acknowledged."""
        return sum(1 for t in self._tracks.values() if t.in_flight is not None)

    def due(self, current: dict[int, SaCounters], now: float, wall: float,
            traffic: dict[int, Traffic] | None = None) -> list[Due]:
        """Checkpoints to write now, given each owned SA's current counters; `now` is the
        monotonic clock, `wall` the time written into the records; `traffic`, each SA's
        traffic over its life, goes into the records as it is."""
        out = []
        for spi, counters in current.items():
            t = self._tracks.get(spi)
            if t is None or t.in_flight is not None:
                continue
            advanced = max(counters.out_seq - t.acked.out_seq,
                           counters.in_highest - t.acked.in_highest)
            if not t.force and advanced <= 0 and counters.in_bitmap == t.acked.in_bitmap:
                continue
            if (t.force or advanced >= self.every_packets
                    or now - t.acked_at_s >= self.every_s):
                t.in_flight = counters
                t.force = False
                out.append(Due(seq_record(spi, self.node_id, t.epoch, counters, "checkpoint",
                                          wall, traffic.get(spi) if traffic else None),
                               t.ike_sa_id))
        return out

    def acked(self, records: list[SeqRecord], now: float) -> None:
        """etcd applied these checkpoints: the send limits move up."""
        for r in records:
            t = self._tracks.get(r.spi)
            if t is not None and t.in_flight is not None:
                t.acked = t.in_flight
                t.acked_at_s = now
                t.in_flight = None
                self.marks[r.spi] = (t.acked.out_seq, t.acked.in_highest, t.acked.in_bitmap)

    def failed(self, records: list[SeqRecord]) -> None:
        """These writes failed (etcd down, guard lost): they are retried by a later `due`."""
        for r in records:
            t = self._tracks.get(r.spi)
            if t is not None and t.in_flight is not None:
                t.force = True  # retry at the next tick, whatever moved
                t.in_flight = None


def merge_window(a: SaCounters, b: SaCounters, size: int) -> SaCounters:
    """Union of two views of one SA (what this node remembers, what etcd says): the larger
    out_seq and every inbound number either has seen."""
    top = max(a.in_highest, b.in_highest)
    mask = (1 << size) - 1
    bitmap = 0
    for c in (a, b):
        shift = top - c.in_highest
        if shift < size:
            bitmap |= (c.in_bitmap << shift) & mask
    return SaCounters(max(a.out_seq, b.out_seq), top, bitmap)
