"""One Child SA as the data plane runs it: seal outbound, open inbound, counters, drops.

Sans-I/O: bytes in, bytes out, `now` passed in. `open` raises EspProtocolError for a packet
to drop; `receive` is the edge that turns that into a counted drop and returns None. A dropped
packet changes no sequence state: the replay window moves only after the ICV verified and the
inner packet passed every check (RFC 4303 §3.4.3).
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag

from cluster.esp.errors import DropReason, EspProtocolError, EspUsageError
from cluster.esp.nonce import IvSource
from cluster.esp.packet import (
    ESP_HEADER_LEN,
    NH_IPV4,
    NH_IPV6,
    PADDING,
    inner_length,
    push_trailer,
)
from cluster.esp.replay import ReplayWindow, infer_seq
from cluster.esp.selector import SelectorSet, TrafficSelector
from cluster.esp.suites import AeadCipher, Suite, make_cipher, suite

_U32 = struct.Struct("!I")
SEQ32_MAX = (1 << 32) - 1
SEQ64_MAX = (1 << 64) - 1
# padding | pad length | next header, by inner IP version and pad length (RFC 4303 §2.4)
_TRAILERS = {v: tuple(PADDING[n] + bytes((n, nh)) for n in range(256))
             for v, nh in ((4, NH_IPV4), (6, NH_IPV6))}


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
                raise EspUsageError(f"{name} {spi:#x} is not a 32-bit non-zero SPI")
        self.spi_in = spi_in
        self.spi_out = spi_out
        self.suite: Suite = suite(encr, integ)
        self.esn = esn
        self._in = make_cipher(self.suite, keys.enc_key_in, keys.integ_key_in)
        self._decrypt = self._in.open
        self._out = make_cipher(self.suite, keys.enc_key_out, keys.integ_key_out)
        # the AEADs are opened inline by `open_run` (the hot path): their decrypt and salt
        self._aead_open: Callable[[bytes, bytes | memoryview, bytes], bytes] | None = None
        self._salt_in = b""
        if isinstance(self._in, AeadCipher):
            self._aead_open = self._in.aead.decrypt
            self._salt_in = self._in.salt
        self._aead_seal: Callable[[bytes, bytes, bytes], bytes] | None = None
        self._salt_out = b""
        if isinstance(self._out, AeadCipher):
            self._aead_seal = self._out.aead.encrypt
            self._salt_out = self._out.salt
        self._spi_in_bytes = spi_in.to_bytes(4)
        self._spi_out_bytes = spi_out.to_bytes(4)
        self.iv_source = iv_source  # needed to send on an AEAD SA (see cluster.esp.nonce)
        self.selectors = SelectorSet(ts_remote)
        self._only_v4 = self.selectors.only_v4
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
            raise EspUsageError(f"counters out of range: {counters}")
        self.out_seq = counters.out_seq
        self.window.restore(counters.in_highest, counters.in_bitmap)

    # --- inbound ---

    def open(self, esp: bytes, now: float) -> bytes:
        """The inner IP packet of an ESP packet for this SA; EspProtocolError to drop."""
        if not esp.startswith(self._spi_in_bytes):
            if len(esp) < self._min_len:
                raise EspProtocolError(DropReason.MALFORMED, f"{len(esp)}-byte ESP packet")
            raise EspProtocolError(DropReason.UNKNOWN_SPI, f"SPI {esp[:4].hex()}")
        inner: list[bytes] = []
        drops: list[DropReason] = []
        self.open_run(esp, 0, len(esp) or 1, now, inner, drops)
        if drops:
            raise EspProtocolError(drops[0])
        return inner[0]

    def open_run(self, buf: bytes, start: int, size: int, now: float, inner: list[bytes],
                 drops: list[DropReason]) -> int:
        """Open the ESP packets of `buf` from offset `start`, each `size` bytes but the last
        (which may be shorter: the datagrams of one UDP GRO receive), as long as they carry
        this SA's SPI. Appends each inner IP packet to `inner` and each refused packet's
        reason to `drops` (the caller counts them); returns the offset it stopped at:
        `len(buf)`, or the first packet of another SPI.

        The per-packet work of `open`, with the SA's state held in locals for the run: this
        is the data plane's hot path (one call per SA per receive, not one per packet). A
        refused packet changes no sequence state, exactly as in `open`.
        """
        n = len(buf)
        spi = self._spi_in_bytes
        startswith = buf.startswith
        view = memoryview(buf)
        window = self.window
        wsize = window.size
        ring = window._ring
        rmask = window._rmask
        highest = window.highest
        esn = self.esn
        min_len, overhead, align = self._min_len, self._overhead, self._align
        aead = self._aead_open
        salt = self._salt_in
        only = self._only_v4
        lo, hi = only if only is not None else (b"", b"")
        unpack = _U32.unpack_from
        # the next number's low-order bits are on the wire: with ESN its low 32 bits
        low_mask = SEQ32_MAX if esn else SEQ64_MAX
        trailers = _TRAILERS[4]
        full_ok = size >= min_len and not (size - overhead) % align
        seq_high = -1  # the high-order bits the ESN AAD prefix below was made for
        aad_prefix = b""
        packets = total_bytes = 0
        stop = n
        for off in range(start, n, size):
            if not startswith(spi, off):
                stop = off
                break
            end = off + size
            if end >= n:  # the last datagram may be shorter
                end = n
                if end - off < min_len or (end - off - overhead) % align:
                    drops.append(DropReason.MALFORMED)
                    continue
            elif not full_ok:
                drops.append(DropReason.MALFORMED)
                continue
            seq = unpack(buf, off + 4)[0]
            if seq == (highest + 1) & low_mask:
                seq = highest + 1  # the next number in order: the common case
            elif esn:
                top = highest & SEQ32_MAX
                if top >= wsize - 1 and seq >= top - wsize + 1:
                    seq += highest - top  # RFC 4303 A2.2 case A, same subspace
                else:
                    try:
                        seq = infer_seq(seq, highest, wsize, True)
                    except EspProtocolError as e:
                        drops.append(e.reason)
                        continue
            if seq <= highest or not seq:
                window.highest = highest
                try:
                    window.check(seq)  # before the ICV: cheap rejection (RFC 4303 §3.4.3)
                except EspProtocolError as e:
                    drops.append(e.reason)
                    continue
            if aead is not None:
                # AES-GCM / ChaCha20-Poly1305 inline: nonce = salt | explicit IV; AAD = SPI |
                # seq, with the high-order bits in the middle under ESN (RFC 4106 §5)
                if esn:
                    if seq >> 32 != seq_high:
                        seq_high = seq >> 32
                        aad_prefix = spi + seq_high.to_bytes(4)
                    aad = aad_prefix + buf[off + 4:off + 8]
                else:
                    aad = buf[off:off + 8]
                try:
                    plain = aead(salt + buf[off + 8:off + 16], view[off + 16:end], aad)
                except InvalidTag:
                    drops.append(DropReason.INTEGRITY)
                    continue
            else:
                try:
                    plain = self._decrypt(buf[off:off + 8], buf[off + 8:end],
                                          seq >> 32 if esn else None)
                except EspProtocolError as e:
                    drops.append(e.reason)
                    continue
            # the trailer and inner header, inline for IPv4 without TFC padding (the common
            # case): the IPv4 length says where the trailer starts, and the trailer must be
            # exactly padding 1, 2, .. | pad length | 4. Anything else, and every refusal,
            # goes through `inner_length`
            total = (plain[2] << 8) | plain[3]
            pad = len(plain) - 2 - total
            if not (0 <= pad < 256 and total >= 20 and plain[0] >> 4 == 4
                    and plain.endswith(trailers[pad])):
                try:
                    total = inner_length(plain)
                except EspProtocolError as e:
                    drops.append(e.reason)
                    continue
            if only is not None and plain[0] >> 4 == 4:  # one IPv4 range: the common case
                if not lo <= plain[12:16] <= hi:
                    drops.append(DropReason.SELECTOR)
                    continue
            elif not self.selectors.allows_source(plain, total):  # the inner packet starts it
                drops.append(DropReason.SELECTOR)
                continue
            if seq == highest + 1:  # in order: one ring byte (ReplayWindow.accept's case)
                ring[seq & rmask] = 1
                highest = seq
            else:
                window.highest = highest
                window.accept(seq)
                highest = window.highest
            inner.append(plain[:total])
            packets += 1
            total_bytes += total
        if packets:
            window.highest = highest
            window._bitmap = None  # the ring changed: rebuild the bitmap when read
            self.packets_in += packets
            self.bytes_in += total_bytes
            self.last_in_s = now
        return stop

    def receive(self, esp: bytes, now: float) -> bytes | None:
        """`open`, with a drop counted instead of raised."""
        try:
            return self.open(esp, now)
        except EspProtocolError as e:
            self.drops[e.reason] += 1
            return None

    # --- outbound ---

    def seal(self, inner: bytes, now: float) -> bytes:
        """The ESP packet carrying the IP packet `inner`; EspUsageError if it cannot."""
        seq = self.out_seq + 1
        if seq > self._seq_max:
            # RFC 4303 §3.3.3: the counter must not cycle; the SA must be rekeyed
            raise EspUsageError(f"SA {self.spi_out:#x}: sequence space exhausted")
        aead = self._aead_seal
        if aead is not None:  # AES-GCM / ChaCha20-Poly1305 inline (the hot path)
            if self.iv_source is None:
                raise EspUsageError("an AEAD SA needs an IvSource to send")
            version = inner[0] >> 4 if inner else 0
            if version != 4 and version != 6:
                raise EspUsageError("tunnel mode carries IPv4 or IPv6 packets only")
            iv = self.iv_source.next_iv()
            padlen = -(len(inner) + 2) % self._align
            header = self._spi_out_bytes + (seq & SEQ32_MAX).to_bytes(4)
            aad = header if not self.esn else (
                self._spi_out_bytes + (seq >> 32).to_bytes(4) + header[4:])
            packet = header + iv + aead(
                self._salt_out + iv, inner + _TRAILERS[version][padlen], aad)
            self.out_seq = seq
            self.packets_out += 1
            self.bytes_out += len(inner)
            self.last_out_s = now
            return packet
        if self._out.counter_iv:  # AES-CTR, AES-GCM with a short ICV: unique, not random
            if self.iv_source is None:
                raise EspUsageError(f"a {self.suite.encr} SA needs an IvSource to send")
            iv = self.iv_source.next_iv()
        else:
            iv = self._out.fresh_iv(b"")  # CBC: random (RFC 3602 §2.3)
        try:
            payload = push_trailer(inner, self.suite.align)
        except ValueError as e:
            raise EspUsageError(str(e)) from None
        header = self._spi_out_bytes + (seq & SEQ32_MAX).to_bytes(4)
        packet = header + self._out.seal(iv, header, payload, seq >> 32 if self.esn else None)
        self.out_seq = seq
        self.packets_out += 1
        self.bytes_out += len(inner)
        self.last_out_s = now
        return packet
