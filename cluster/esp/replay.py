"""The inbound anti-replay window (RFC 4303 §3.4.3) and ESN inference (RFC 4303 Appendix A).

The window is a bitmap as a Python int: bit i set means sequence number `highest - i` was
received and authenticated. `check` only looks (it runs before the ICV, so a forged packet
cannot move the window); `accept` records a packet after its ICV verified.
"""

from __future__ import annotations

from cluster.esp.errors import DropReason, EspProtocolError, EspUsageError

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
        raise EspProtocolError(DropReason.TOO_OLD, "before the first subspace")
    return (th_used << 32) | low


class ReplayWindow:
    """Anti-replay state of one inbound SA: `highest` seen and the bitmap below it.

    Kept as a ring of one byte per sequence number (RFC 6479's idea): accepting the next
    number sets one byte instead of shifting a `size`-bit integer (which costs more than
    the AES-GCM of a 1400-byte packet at 4096). The ring has a power-of-two length `R` ≥
    `size`; number `n` lives at `n % R`. Entries for numbers `size` or more below `highest`
    are stale and never read (such numbers are too old). `bitmap` (bit i: `highest - i` was
    received) is built from the ring when read, and cached until the next accept.
    """

    __slots__ = ("_bitmap", "_mask", "_ring", "_rmask", "highest", "size")

    def __init__(self, size: int = 1024, highest: int = 0, bitmap: int = 0) -> None:
        if not MIN_WINDOW <= size <= MAX_WINDOW:
            raise EspUsageError(
                f"replay window must be {MIN_WINDOW}..{MAX_WINDOW} packets, not {size}")
        self.size = size
        self._mask = (1 << size) - 1
        ring_len = 1 << (size - 1).bit_length()
        self._rmask = ring_len - 1
        self._ring = bytearray(ring_len)
        self.highest = 0
        self._bitmap: int | None = 0
        self.restore(highest, bitmap)

    @property
    def bitmap(self) -> int:
        """Bit i set: sequence number `highest - i` was received and authenticated."""
        b = self._bitmap
        if b is None:
            ring, size = self._ring, self.size
            idx = self.highest & self._rmask
            # numbers highest, highest - 1, ... are at idx, idx - 1, ... (wrapping)
            rev = (ring[idx::-1] + ring[:idx:-1])[:size]
            b = self._bitmap = int(rev[::-1].translate(_BITS), 2) if size else 0
        return b

    def check(self, seq: int) -> None:
        """Raise REPLAY / TOO_OLD if `seq` must be dropped; changes nothing."""
        if seq == 0:
            # RFC 4303 §3.3.3: the first packet carries 1 (low bits 0 are fine after a wrap)
            raise EspProtocolError(DropReason.TOO_OLD, "sequence number 0")
        if seq > self.highest:
            return
        if self.highest - seq >= self.size:
            raise EspProtocolError(DropReason.TOO_OLD, f"seq {seq} left of the window")
        if self._ring[seq & self._rmask]:
            raise EspProtocolError(DropReason.REPLAY, f"seq {seq} already received")

    def accept(self, seq: int) -> None:
        """Record an authenticated `seq` (already `check`ed)."""
        ring = self._ring
        rmask = self._rmask
        highest = self.highest
        if seq > highest:
            if seq - highest > 1:  # numbers skipped: their slots hold stale entries
                if seq - highest > rmask:
                    ring[:] = bytes(len(ring))
                else:
                    a, b = (highest + 1) & rmask, seq & rmask
                    if a <= b:
                        ring[a:b] = bytes(b - a)
                    else:
                        ring[a:] = bytes(len(ring) - a)
                        ring[:b] = bytes(b)
            self.highest = seq
        ring[seq & rmask] = 1
        self._bitmap = None

    def restore(self, highest: int, bitmap: int) -> None:
        """Install another node's counters (a hand-off or checkpoint)."""
        bitmap &= self._mask
        ring_len = len(self._ring)
        # r[j]: bit ring_len - 1 - j of the bitmap, i.e. number highest - (ring_len - 1 - j)
        r = format(bitmap, f"0{ring_len}b").encode().translate(_FROM_BITS)
        k = (highest + 1) & self._rmask
        self._ring[:] = r[-k:] + r[:-k] if k else r
        self.highest = highest
        self._bitmap = bitmap


_BITS = bytes.maketrans(b"\x00\x01", b"01")
_FROM_BITS = bytes.maketrans(b"01", b"\x00\x01")
