"""Clients made with the project's IKE initiator that then carry traffic in userspace ESP.

`EspClient` connects through the VIP with `keyd.client.IkeClient` (IKE_SA_INIT + IKE_AUTH,
NAT-T port 4500), builds a `cluster.esp.sa.ChildSa` from the keys the initiator derived and
sends ICMP echo requests to the protected server in ESP-in-UDP from its port 4500; the
replies come back (through whichever node owns the client) as ESP it opens and checks.
`Pinger` drives several clients from one thread: one echo per client every `period_s`, the
arrival time of every answered echo kept per client. IKE requests arriving on port 4500
(non-ESP marker, e.g. a liveness check) go to the initiator core, which answers them.

`python -m bench.esp_client initiate ...` makes many clients (handshakes only, no traffic),
one address each from a range the namespace holds (see cluster/lab/bench.py), and prints
`{"ok": n, "failed": n, "seconds": s}`: the load for moving many clients off a dead node.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import itertools
import json
import os
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from cluster.esp.nonce import PREFIX_LEN, IvSource
from cluster.esp.sa import ChildSa, SaKeys
from cluster.esp.selector import TrafficSelector
from cluster.node.relay import internet_checksum
from keyd.client import ExchangeTimeout, IkeClient

IKE_PROPOSAL = "aes128gcm16-prfsha256-x25519"
ESP_PROPOSAL = "aes128gcm16"
ICMP_ECHO, ICMP_REPLY = 8, 0
_NON_ESP = b"\x00\x00\x00\x00"


#: The Internet checksum (RFC 1071): the node's own, for the ICMP and IPv4 headers built here
checksum = internet_checksum


def push_echo(src: str, dst: str, ident: int, seq: int, payload: bytes = b"b" * 32) -> bytes:
    """An IPv4 packet carrying an ICMP echo request."""
    icmp = struct.pack("!BBHHH", ICMP_ECHO, 0, 0, ident, seq & 0xFFFF) + payload
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), seq & 0xFFFF, 0, 64, 1, 0,
                         ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + icmp


def pull_echo_reply(inner: bytes) -> tuple[int, int] | None:
    """(identifier, sequence) of an IPv4 ICMP echo reply, None for anything else."""
    if len(inner) < 28 or inner[0] >> 4 != 4 or inner[9] != 1:
        return None
    off = (inner[0] & 0x0F) * 4
    if len(inner) < off + 8 or inner[off] != ICMP_REPLY:
        return None
    ident, seq = struct.unpack_from("!HH", inner, off + 4)
    return ident, seq


@dataclass
class EspClient:
    """One established client: its IKE side and its Child SA (the first one)."""

    name: str
    ike: IkeClient
    ike_sa_id: str
    virtual_ip: str
    sa: ChildSa
    sock: socket.socket
    replies: list[float] = field(default_factory=list)   # monotonic arrival times
    sent: int = 0
    bad: int = 0          # datagrams that were neither a valid reply nor IKE
    closed: bool = False

    @classmethod
    def connect(cls, name: str, local_ip: str, vip: str, psk: bytes, gateway_id: str,
                cas: tuple[x509.Certificate, ...], timeout_s: float = 30.0) -> EspClient:
        """IKE_SA_INIT + IKE_AUTH through the VIP (sockets are made in the calling thread's
        network namespace), with a virtual IP; the ESP side from the derived keys."""
        ike = IkeClient.psk(psk, f"{name}@bench.example", gateway_id, local_ip, (vip, 500),
                            4500, IKE_PROPOSAL, ESP_PROPOSAL, cas)
        try:
            est = ike.connect(timeout_s)
            children = ike.children()
            if not children or est.virtual_ip is None:
                raise ExchangeTimeout(f"{name}: established without a Child SA or address")
        except BaseException:
            ike.close()
            raise
        c = children[0].child
        sa = ChildSa(spi_in=c.spi_in, spi_out=c.spi_out, encr=c.encr, integ=c.integ, esn=c.esn,
                     keys=SaKeys(c.enc_key_in, c.enc_key_out, c.integ_key_in, c.integ_key_out),
                     ts_remote=tuple(TrafficSelector.from_network(n) for n in c.ts_remote),
                     iv_source=IvSource(os.urandom(PREFIX_LEN)))
        natt = next(s for port, s in ike._socks.items() if port == 4500)
        return cls(name, ike, est.ike_sa_id, est.virtual_ip, sa, natt)

    def send_echo(self, server: str, vip: str, ident: int) -> None:
        self.sent += 1
        esp = self.sa.seal(push_echo(self.virtual_ip, server, ident, self.sent), time.time())
        with contextlib.suppress(BlockingIOError, OSError):
            self.sock.sendto(esp, (vip, 4500))

    def on_datagram(self, data: bytes, src: tuple[str, int], now: float) -> None:
        if data[:4] == _NON_ESP:          # IKE on the NAT-T port: the initiator answers
            self.ike.core.receive_datagram(data, src, (self.ike.local[0], 4500), time.time())
            self.ike._flush()
            return
        inner = self.sa.receive(data, time.time())
        if inner is not None and pull_echo_reply(inner) is not None:
            self.replies.append(now)
        else:
            self.bad += 1

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.ike.close()


class Pinger:
    """Every client sends an echo every period_s; one thread sends, receives and decrypts."""

    def __init__(self, clients: list[EspClient], server: str, vip: str,
                 period_s: float = 0.005) -> None:
        self.clients, self.server, self.vip, self.period_s = clients, server, vip, period_s
        self._by_fd = {c.sock.fileno(): c for c in clients}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pinger", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as e:   # reported by the benchmark, not lost in a thread
            self.error = e

    def _loop(self) -> None:
        socks = [c.sock for c in self.clients]
        next_send = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_send:
                for i, c in enumerate(self.clients):
                    c.send_echo(self.server, self.vip, i + 1)
                next_send += self.period_s
                if next_send < now:            # fell behind: no burst to catch up
                    next_send = now + self.period_s
            ready, _, _ = select.select(socks, [], [], max(0.0, next_send - time.monotonic()))
            now = time.monotonic()
            for s in ready:
                c = self._by_fd[s.fileno()]
                while True:
                    try:
                        data, src = s.recvfrom(65535)
                    except (BlockingIOError, InterruptedError):
                        break
                    c.on_datagram(data, (src[0], src[1]), now)


def longest_silence(replies: list[float], since: float, until: float) -> float:
    """The longest time without an answer in [since, until] (window edges count)."""
    times = [since, *(t for t in replies if since < t < until), until]
    return max(b - a for a, b in itertools.pairwise(times))


# -- many clients, handshakes only ------------------------------------------------------------

def handshakes(first: str, count: int, vip: str, psk: bytes, gateway_id: str, ca_file: str,
               budget_s: float) -> tuple[int, int, float]:
    """Up to `count` clients from consecutive addresses starting at `first`, one handshake
    each (no DELETE: they stay established), stopping once `budget_s` has passed; returns
    (established, failed, seconds)."""
    cas = tuple(x509.load_pem_x509_certificates(Path(ca_file).read_bytes()))
    base = ipaddress.IPv4Address(first)
    ok = failed = 0
    t0 = time.monotonic()
    for i in range(count):
        if time.monotonic() - t0 > budget_s:
            break
        with IkeClient.psk(psk, f"mass-{base + i}@bench.example", gateway_id, str(base + i),
                           (vip, 500), 4500, IKE_PROPOSAL, ESP_PROPOSAL, cas,
                           request_address=False) as client:
            try:
                client.connect(timeout_s=20)
                ok += 1
            except ExchangeTimeout:
                failed += 1
    return ok, failed, time.monotonic() - t0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.esp_client")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("initiate", help="many handshakes, one client address each")
    p.add_argument("--first", required=True, help="first client address")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--target", required=True, help="the VIP")
    p.add_argument("--psk-file", required=True)
    p.add_argument("--gateway-id", required=True)
    p.add_argument("--ca", required=True, help="CA of the gateway's certificate (PEM)")
    p.add_argument("--budget-s", type=float, default=120.0)
    args = parser.parse_args(argv)
    psk = Path(args.psk_file).read_bytes().strip()
    ok, failed, took = handshakes(args.first, args.count, args.target, psk, args.gateway_id,
                                  args.ca, args.budget_s)
    print(json.dumps({"ok": ok, "failed": failed, "seconds": round(took, 2)}))


if __name__ == "__main__":
    main()
