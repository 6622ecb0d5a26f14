"""The ESP decoder of the node data plane: UDP/4500 payloads (RFC 3948: ESP, IKE behind the
non-ESP marker, NAT keepalive) and bare ESP (RFC 4303), for every suite of cluster/esp, with
and without ESN, through `SaTable.receive` (the entry point that must never raise).

An input is `SA byte | mode byte | rest`. The SA byte picks one receiving SA (suite x ESN); its
replay window is reset to the same state before every input, so an input's outcome does not
depend on the ones before it. Mode 0: `rest` is a UDP/4500 payload. Mode 1: `rest` is a bare
ESP packet. Mode 2: `rest` is `sequence number (4) | plaintext`, sealed here under the SA's key
(fixed IV), so the ICV verifies and the fuzzer reaches the trailer, inner-packet and selector
checks and the replay window.
"""

from __future__ import annotations

import ipaddress

from soak import decoders as d

TITLE = "ESP: every cluster/esp suite, ESN on and off, UDP encapsulation and bare ESP"
TYPED: tuple[type[BaseException], ...] = ()  # SaTable.receive refuses by counted drop only

_NOW = 1000.0
_WINDOW = 64
_HIGHEST = 5000  # every input starts from this replay state (below: ESN's high bits too)
_CLIENT = ipaddress.ip_network("10.99.0.0/24")


def _suites() -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for encr in d.ENCR_NAMES:
        try:
            d.suite(encr, None)
            out.append((encr, None))
        except Exception:
            out += [(encr, integ) for integ in d.INTEG_NAMES]
    return out


def _keys(encr: str, integ: str | None) -> tuple[bytes, bytes]:
    s = d.suite(encr, integ)
    return bytes(range(1, 1 + s.enc_key_len)), bytes(range(90, 90 + s.integ_key_len))


class _Sa:
    """One receiving SA, its sender twin and a cipher that seals any plaintext for it."""

    def __init__(self, spi: int, encr: str, integ: str | None, esn: bool) -> None:
        enc, mac = _keys(encr, integ)
        ts = (d.TrafficSelector(_CLIENT[0], _CLIENT[-1]),
              d.TrafficSelector(ipaddress.ip_address("fd00::"),
                                ipaddress.ip_address("fd00::ffff")))
        self.receiver = d.ChildSa(spi_in=spi, spi_out=spi + 1, encr=encr, integ=integ, esn=esn,
                                  keys=d.SaKeys(enc, enc, mac, mac), ts_remote=ts,
                                  replay_window=_WINDOW)
        self.sender = d.ChildSa(spi_in=spi + 1, spi_out=spi, encr=encr, integ=integ, esn=esn,
                                keys=d.SaKeys(enc, enc, mac, mac),
                                iv_source=d.IvSource(spi.to_bytes(4)))
        self.cipher = d.make_cipher(d.suite(encr, integ), enc, mac)
        self.iv = bytes(range(0x30, 0x30 + self.receiver.suite.iv_len))
        self.esn = esn
        self.highest = _HIGHEST + ((7 << 32) if esn else 0)
        self.start = d.SaCounters(0, self.highest, (1 << _WINDOW) - 1 - 0b1010)

    def reset(self) -> None:
        self.receiver.restore(self.start)

    def seal_plain(self, seq_low: int, plain: bytes) -> bytes:
        align = self.receiver.suite.align
        if len(plain) % align:
            plain += bytes(-len(plain) % align)
        header = self.receiver.spi_in.to_bytes(4) + seq_low.to_bytes(4)
        seq_high = self.highest >> 32 if self.esn else None
        return header + self.cipher.seal(self.iv, header, plain, seq_high)


SAS: list[_Sa] = []
TABLE: d.SaTable[d.ChildSa] = d.SaTable()
for _i, (_encr, _integ) in enumerate(_suites()):
    for _esn in (False, True):
        _sa = _Sa(0x1000 + 16 * len(SAS), _encr, _integ, _esn)
        SAS.append(_sa)
        TABLE.install(_sa.receiver)


def _ipv4(src: str, payload: bytes) -> bytes:
    total = 20 + len(payload)
    return (bytes((0x45, 0)) + total.to_bytes(2) + bytes(4) + bytes((64, 1, 0, 0))
            + ipaddress.ip_address(src).packed + ipaddress.ip_address("10.20.0.1").packed
            + payload)


def _ipv6(src: str, payload: bytes) -> bytes:
    return (b"\x60" + bytes(3) + len(payload).to_bytes(2) + bytes((58, 64))
            + ipaddress.ip_address(src).packed + ipaddress.ip_address("fd01::1").packed
            + payload)


def seeds() -> list[bytes]:
    out = [b"\0\0" + bytes(4) + b"IKE", b"\0\0\xff", b"\0\1" + bytes(8)]
    inners = (_ipv4("10.99.0.7", b"\x08\0" + bytes(30)), _ipv6("fd00::7", b"\x80\0" + bytes(8)),
              _ipv4("10.98.0.7", b"\x08\0" + bytes(6)))
    for i, sa in enumerate(SAS):
        sel = bytes((i % 256,))
        sa.reset()
        sa.sender.restore(d.SaCounters(sa.highest, 0, 0))
        for inner in inners:
            try:
                packet = sa.sender.seal(inner, _NOW)
            except Exception:
                continue
            out.append(sel + b"\0" + packet)
            out.append(sel + b"\1" + packet)
        seq = (_HIGHEST + 3).to_bytes(4)
        for inner, nh in ((inners[0], 4), (inners[1], 41), (b"", 59)):
            pad = -(len(inner) + 2) % sa.receiver.suite.align
            out.append(sel + b"\2" + seq + inner + bytes(range(1, pad + 1)) + bytes((pad, nh)))
    return out


def one_input(data: bytes) -> bool:
    """True if the packet was accepted, False for a counted drop (or not ESP)."""
    if len(data) < 2:
        return False
    sa = SAS[data[0] % len(SAS)]
    sa.reset()
    mode = data[1] % 3
    if mode == 0:
        event = TABLE.receive(data[2:], _NOW)
    elif mode == 1:
        event = TABLE.receive_esp(data[2:], _NOW)
    else:
        if len(data) < 6:
            return False
        event = TABLE.receive(sa.seal_plain(int.from_bytes(data[2:6]), data[6:]), _NOW)
    return type(event).__name__ == "Decrypted"
