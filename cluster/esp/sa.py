"""One Child SA as the data plane runs it: seal outbound, open inbound, counters, drops.

Sans-I/O: bytes in, bytes out, `now` passed in. `open` raises RemoteProtocolError for a packet
to drop; `receive` is the edge that turns that into a counted drop and returns None. A dropped
packet changes no sequence state: the replay window moves only after the ICV verified and the
inner packet passed every check (RFC 4303 §3.4.3).
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass

from cluster.esp.errors import DropReason, LocalProtocolError, RemoteProtocolError
from cluster.esp.nonce import IvSource
from cluster.esp.packet import ESP_HEADER_LEN, pull_inner, push_trailer
from cluster.esp.replay import ReplayWindow, infer_seq
from cluster.esp.selector import SelectorSet, TrafficSelector
from cluster.esp.suites import Suite, make_cipher, suite

_U32 = struct.Struct("!I")
SEQ32_MAX = (1 << 32) - 1
SEQ64_MAX = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class SaCounters:
    """The sequence state another node needs to continue an SA (a `seq/<spi>` record)."""

    out_seq: int  # last outbound sequence number sent; 0: none yet
    in_highest: int  # highest authenticated inbound sequence number (64-bit with ESN)
    in_bitmap: int  # bit i: in_highest - i was received (RFC 4303 §3.4.3)


@dataclass(frozen=True, slots=True)
class SaKeys:
    """Key material of one Child SA, from this side's point of view."""

    enc_key_in: bytes
    enc_key_out: bytes
    integ_key_in: bytes = b""
    integ_key_out: bytes = b""


class ChildSa:
    """A Child SA pair in tunnel mode: inbound `spi_in`, outbound `spi_out`."""

    def __init__(self, *, spi_in: int, spi_out: int, encr: str, integ: str | None, esn: bool,
                 keys: SaKeys, ts_remote: tuple[TrafficSelector, ...] = (),
                 replay_window: int = 1024, iv_source: IvSource | None = None) -> None:
        for name, spi in (("spi_in", spi_in), ("spi_out", spi_out)):
            if not 0 < spi <= SEQ32_MAX:
                raise LocalProtocolError(f"{name} {spi:#x} is not a 32-bit non-zero SPI")
        self.spi_in = spi_in
        self.spi_out = spi_out
        self.suite: Suite = suite(encr, integ)
        self.esn = esn
        self._in = make_cipher(self.suite, keys.enc_key_in, keys.integ_key_in)
        self._decrypt = self._in.open
        self._out = make_cipher(self.suite, keys.enc_key_out, keys.integ_key_out)
        self._spi_in_bytes = spi_in.to_bytes(4)
        self._spi_out_bytes = spi_out.to_bytes(4)
        self.iv_source = iv_source  # needed to send on an AEAD SA (see cluster.esp.nonce)
        self.selectors = SelectorSet(ts_remote)
        self.window = ReplayWindow(replay_window)
        self.out_seq = 0
        self._seq_max = SEQ64_MAX if esn else SEQ32_MAX
        # the smallest packet that can be valid: header, IV, one aligned block, ICV
        self._overhead = ESP_HEADER_LEN + self.suite.iv_len + self.suite.icv_len
        self._min_len = self._overhead + self.suite.align
        self._align = self.suite.align
        self.packets_in = self.bytes_in = self.packets_out = self.bytes_out = 0
        self.drops: Counter[DropReason] = Counter()
        self.last_in_s: float | None = None
        self.last_out_s: float | None = None

    # --- counters (hand-off and checkpoints) ---

    def counters(self) -> SaCounters:
        return SaCounters(self.out_seq, self.window.highest, self.window.bitmap)

    def restore(self, counters: SaCounters) -> None:
        """Continue from counters another node exported (exactly, or after a jump)."""
        if not 0 <= counters.out_seq <= self._seq_max or counters.in_highest < 0:
            raise LocalProtocolError(f"counters out of range: {counters}")
        self.out_seq = counters.out_seq
        self.window.restore(counters.in_highest, counters.in_bitmap)

    # --- inbound ---

    def open(self, esp: bytes, now: float) -> bytes:
        """The inner IP packet of an ESP packet for this SA; RemoteProtocolError to drop."""
        if len(esp) < self._min_len:
            raise RemoteProtocolError(DropReason.MALFORMED, f"{len(esp)}-byte ESP packet")
        if esp[:4] != self._spi_in_bytes:
            raise RemoteProtocolError(DropReason.UNKNOWN_SPI, f"SPI {esp[:4].hex()}")
        if (len(esp) - self._overhead) % self._align:
            raise RemoteProtocolError(DropReason.MALFORMED, "payload not aligned")
        window = self.window
        seq = _U32.unpack_from(esp, 4)[0]
        if self.esn:
            seq = infer_seq(seq, window.highest, window.size, True)
        if seq <= window.highest or not seq:
            window.check(seq)  # before the ICV: cheap rejection (RFC 4303 §3.4.3)
        inner = pull_inner(self._decrypt(esp[:8], esp[8:], seq >> 32 if self.esn else None))
        if not self.selectors.allows_source(inner):
            raise RemoteProtocolError(DropReason.SELECTOR, "inner source outside selectors")
        window.accept(seq)
        self.packets_in += 1
        self.bytes_in += len(inner)
        self.last_in_s = now
        return inner

    def receive(self, esp: bytes, now: float) -> bytes | None:
        """`open`, with a drop counted instead of raised."""
        try:
            return self.open(esp, now)
        except RemoteProtocolError as e:
            self.drops[e.reason] += 1
            return None

    # --- outbound ---

    def seal(self, inner: bytes, now: float) -> bytes:
        """The ESP packet carrying the IP packet `inner`; LocalProtocolError if it cannot."""
        seq = self.out_seq + 1
        if seq > self._seq_max:
            # RFC 4303 §3.3.3: the counter must not cycle; the SA must be rekeyed
            raise LocalProtocolError(f"SA {self.spi_out:#x}: sequence space exhausted")
        if self.suite.aead:
            if self.iv_source is None:
                raise LocalProtocolError("an AEAD SA needs an IvSource to send")
            iv = self.iv_source.next_iv()
        else:
            iv = self._out.fresh_iv(b"")
        try:
            payload = push_trailer(inner, self.suite.align)
        except ValueError as e:
            raise LocalProtocolError(str(e)) from None
        header = self._spi_out_bytes + (seq & SEQ32_MAX).to_bytes(4)
        packet = header + self._out.seal(iv, header, payload, seq >> 32 if self.esn else None)
        self.out_seq = seq
        self.packets_out += 1
        self.bytes_out += len(inner)
        self.last_out_s = now
        return packet
