"""The inbound anti-replay window (RFC 4303 §3.4.3) and ESN inference (RFC 4303 Appendix A).

The window is a bitmap as a Python int: bit i set means sequence number `highest - i` was
received and authenticated. `check` only looks (it runs before the ICV, so a forged packet
cannot move the window); `accept` records a packet after its ICV verified.
"""

from __future__ import annotations

from cluster.esp.errors import DropReason, LocalProtocolError, RemoteProtocolError

MIN_WINDOW = 64
MAX_WINDOW = 4096
_LOW = 0xFFFFFFFF


def infer_seq(low: int, highest: int, window: int, esn: bool) -> int:
    """The full sequence number of a packet carrying `low` (RFC 4303 Appendix A2.2).

    Without ESN the number is the 32 bits on the wire. With ESN the high-order 32 bits are
    those of the window's top, or one more / one less when `low` lies beyond a wrap of the
    low-order counter. Raises TOO_OLD when the inferred high bits would be negative.
    """
    if not esn:
        return low
    th, tl = highest >> 32, highest & _LOW
    if tl >= window - 1:  # Case A: window within one sequence subspace
        th_used = th if low >= tl - window + 1 else th + 1
    else:  # Case B: window spans two subspaces
        th_used = th - 1 if low >= (tl - window + 1) & _LOW else th
    if th_used < 0:
        raise RemoteProtocolError(DropReason.TOO_OLD, "before the first subspace")
    return (th_used << 32) | low


class ReplayWindow:
    """Anti-replay state of one inbound SA: `highest` seen and the bitmap below it."""

    __slots__ = ("_mask", "bitmap", "highest", "size")

    def __init__(self, size: int = 1024, highest: int = 0, bitmap: int = 0) -> None:
        if not MIN_WINDOW <= size <= MAX_WINDOW:
            raise LocalProtocolError(
                f"replay window must be {MIN_WINDOW}..{MAX_WINDOW} packets, not {size}")
        self.size = size
        self._mask = (1 << size) - 1
        self.highest = highest
        self.bitmap = bitmap & self._mask

    def check(self, seq: int) -> None:
        """Raise REPLAY / TOO_OLD if `seq` must be dropped; changes nothing."""
        if seq == 0:
            # RFC 4303 §3.3.3: the first packet carries 1 (low bits 0 are fine after a wrap)
            raise RemoteProtocolError(DropReason.TOO_OLD, "sequence number 0")
        if seq > self.highest:
            return
        offset = self.highest - seq
        if offset >= self.size:
            raise RemoteProtocolError(DropReason.TOO_OLD, f"seq {seq} left of the window")
        if (self.bitmap >> offset) & 1:
            raise RemoteProtocolError(DropReason.REPLAY, f"seq {seq} already received")

    def accept(self, seq: int) -> None:
        """Record an authenticated `seq` (already `check`ed)."""
        if seq > self.highest:
            shift = seq - self.highest
            self.bitmap = ((self.bitmap << shift) | 1) & self._mask if shift < self.size else 1
            self.highest = seq
        else:
            self.bitmap |= 1 << (self.highest - seq)

    def restore(self, highest: int, bitmap: int) -> None:
        """Install another node's counters (a hand-off or checkpoint)."""
        self.highest = highest
        self.bitmap = bitmap & self._mask
