"""One Child SA as the data plane runs it: seal outbound, open inbound, counters, drops.

Sans-I/O: bytes in, bytes out, `now` passed in. `open` raises RemoteProtocolError for a packet
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

from cluster.esp.errors import DropReason, LocalProtocolError, RemoteProtocolError
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
                raise LocalProtocolError(f"{name} {spi:#x} is not a 32-bit non-zero SPI")
        self.spi_in = spi_in
        self.spi_out = spi_out
        self.suite: Suite = suite(encr, integ)
        self.esn = esn
        self._in = make_cipher(self.suite, keys.enc_key_in, keys.integ_key_in)
        self._decrypt = self._in.open
        self._out = make_cipher(self.suite, keys.enc_key_out, keys.integ_key_out)
        # the AEADs are opened inline by `open` (the hot path): their decrypt and salt
        self._aead_open: Callable[[bytes, bytes, bytes], bytes] | None = None
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
            raise LocalProtocolError(f"counters out of range: {counters}")
        self.out_seq = counters.out_seq
        self.window.restore(counters.in_highest, counters.in_bitmap)

    # --- inbound ---

    def open(self, esp: bytes, now: float) -> bytes:
        """The inner IP packet of an ESP packet for this SA; RemoteProtocolError to drop."""
        n = len(esp)
        if n < self._min_len:
            raise RemoteProtocolError(DropReason.MALFORMED, f"{n}-byte ESP packet")
        if not esp.startswith(self._spi_in_bytes):
            raise RemoteProtocolError(DropReason.UNKNOWN_SPI, f"SPI {esp[:4].hex()}")
        if (n - self._overhead) % self._align:
            raise RemoteProtocolError(DropReason.MALFORMED, "payload not aligned")
        window = self.window
        highest = window.highest
        seq = _U32.unpack_from(esp, 4)[0]
        if self.esn:
            top = highest & SEQ32_MAX
            if top >= window.size - 1 and seq >= top - window.size + 1:
                seq += highest - top  # RFC 4303 A2.2 case A, same subspace: the common case
            else:
                seq = infer_seq(seq, highest, window.size, True)
        if seq <= highest or not seq:
            window.check(seq)  # before the ICV: cheap rejection (RFC 4303 §3.4.3)
        aead = self._aead_open
        if aead is not None:
            # AES-GCM / ChaCha20-Poly1305 inline: nonce = salt | explicit IV; AAD = SPI |
            # seq, with the high-order bits in the middle under ESN (RFC 4106 §5)
            aad = esp[:8] if not self.esn else esp[:4] + (seq >> 32).to_bytes(4) + esp[4:8]
            try:
                plain = aead(self._salt_in + esp[8:16], esp[16:], aad)
            except InvalidTag:
                raise RemoteProtocolError(DropReason.INTEGRITY) from None
        else:
            plain = self._decrypt(esp[:8], esp[8:], seq >> 32 if self.esn else None)
        total = inner_length(plain)
        only = self._only_v4
        if only is not None and plain[0] >> 4 == 4:  # one IPv4 range: the common case
            if not only[0] <= plain[12:16] <= only[1]:
                raise RemoteProtocolError(DropReason.SELECTOR, "inner source outside selectors")
        elif not self.selectors.allows_source(plain, total):  # the inner packet starts it
            raise RemoteProtocolError(DropReason.SELECTOR, "inner source outside selectors")
        window.accept(seq)
        self.packets_in += 1
        self.bytes_in += total
        self.last_in_s = now
        return plain[:total]

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
        aead = self._aead_seal
        if aead is not None:  # AES-GCM / ChaCha20-Poly1305 inline (the hot path)
            if self.iv_source is None:
                raise LocalProtocolError("an AEAD SA needs an IvSource to send")
            version = inner[0] >> 4 if inner else 0
            if version != 4 and version != 6:
                raise LocalProtocolError("tunnel mode carries IPv4 or IPv6 packets only")
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
        iv = self._out.fresh_iv(b"")  # AES-CBC: random (RFC 3602 §2.3)
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
