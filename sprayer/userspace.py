"""The userspace driver: the same steering as nftables, done by a Python forwarder.

The slow path, for hosts without nftables: every datagram crosses into Python and back
(measured in bench/failover.py). It keeps what IKE NAT detection (RFC 7296 §2.23) and ESP
rebinding need — the client's own source address and port — this way:

- the sprayer host holds the VIP (on loopback); UDP sockets on VIP:500 and VIP:4500 receive;
- each datagram is sent again, unchanged, from a raw socket (IP_HDRINCL) with the *client's*
  source address and port and destination VIP, and SO_MARK = the receiver's mark;
- `ip rule fwmark M lookup M` (routes.py) routes it to that back end; the `local` rule is
  moved from preference 0 to 32000 so marked packets meet our rules before the local table
  (unmarked packets still reach the local VIP sockets).

What it cannot do, and what the host needs:
- packets are copied, not forwarded: IP options, TOS/ECN and TTL are not carried over (TTL is
  reset to 64), fragments are reassembled first, the UDP checksum is sent as zero (allowed
  for IPv4, RFC 768; RFC 3948 §2.1 tells receivers not to rely on it);
- replies from back ends (source VIP) are forwarded by the kernel; since the VIP is local
  here, the back-end interface needs `accept_local=1` and `rp_filter=0`;
- root (CAP_NET_RAW, CAP_NET_ADMIN); IPv4 only.
"""

from __future__ import annotations

import hashlib
import logging
import select
import socket
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from cluster.host import DriverError, inside_netns, run
from sprayer.backends import MarkAllocator, backend_marks, keyd_backends
from sprayer.keyd import keyd_bucket_marks, keyd_for
from sprayer.nft import IKE_PORT, NATT_PORT, SpiMapCheck
from sprayer.routes import RouteDriver
from sprayer.view import Targets

log = logging.getLogger("sprayer.userspace")

LOCAL_RULE_PREF = 32000


def push_udp_ip(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    """An IPv4 + UDP datagram (RFC 791, RFC 768); kernel fills IP checksum, length and id."""
    udp = struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64,
                     socket.IPPROTO_UDP, 0, socket.inet_aton(src[0]), socket.inet_aton(dst[0]))
    return ip + udp


@dataclass(slots=True)
class Steering:
    """The forwarder's lookup tables (replaced whole on every apply)."""

    keyd: list[int] = field(default_factory=list)
    spis: dict[int, int] = field(default_factory=dict)
    fallback: list[int] = field(default_factory=list)


def pick(marks: Sequence[int], client: tuple[str, int], with_port: bool = True) -> int | None:
    """One of `marks` by a stable hash of the client's address (and port, `with_port`)."""
    if not marks:
        return None
    text = f"{client[0]}:{client[1]}" if with_port else client[0]
    h = hashlib.blake2b(text.encode(), digest_size=4).digest()
    return marks[int.from_bytes(h, "big") % len(marks)]


def steer(steering: Steering, port: int, payload: bytes, client: tuple[str, int]) -> int | None:
    """The mark for one datagram to the VIP, as the nftables rules would choose it."""
    # IKE by the client's address only, as the nftables rules: the float from 500 to 4500
    # (RFC 7296 §2.23) keeps a client on the keyd that answered its IKE_SA_INIT
    if port == IKE_PORT or payload[:4] == b"\x00\x00\x00\x00":
        return pick(steering.keyd, client, with_port=False)
    if len(payload) < 8:      # not ESP (RFC 3948 §2.2: 1-byte NAT-keepalive): to keyd
        return pick(steering.keyd, client, with_port=False)
    spi = int.from_bytes(payload[:4], "big")
    mark = steering.spis.get(spi)
    return mark if mark is not None else pick(steering.fallback, client)


class UserspaceForwarder:
    def __init__(self, vip: str, *, netns: str | None = None) -> None:
        self.vip = vip
        self.steering = Steering()
        self.forwarded = 0
        self.dropped = 0
        with inside_netns(netns):
            self.socks = {}
            for port in (IKE_PORT, NATT_PORT):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((vip, port))
                except OSError as e:
                    raise DriverError(f"userspace forwarder: bind {vip}:{port}: {e} "
                                      "(the VIP must be a local address here)") from None
                self.socks[s.fileno()] = (s, port)
            self.raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="forwarder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        socks = [s for s, _ in self.socks.values()]
        while not self._stop.is_set():
            ready, _, _ = select.select(socks, [], [], 0.2)
            for s in ready:
                try:
                    payload, client = s.recvfrom(65535)
                except OSError:
                    continue
                self.forward(self.socks[s.fileno()][1], payload, client)

    def forward(self, port: int, payload: bytes, client: tuple[str, int]) -> None:
        mark = steer(self.steering, port, payload, client)
        if mark is None:
            self.dropped += 1
            return
        try:
            self.raw.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
            self.raw.sendto(push_udp_ip(client, (self.vip, port), payload), (self.vip, 0))
            self.forwarded += 1
        except OSError as e:
            self.dropped += 1
            log.debug("forward failed: %s", e)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        for s, _ in self.socks.values():
            s.close()
        self.raw.close()


class UserspaceApplier:
    """Routes as for nftables, plus the forwarder's tables instead of an nftables map."""

    def __init__(self, vip: str, keyd: list[str], *, netns: str | None = None) -> None:
        self.netns = netns
        self.marks = MarkAllocator()
        self.seed = keyd_backends(keyd)
        self.keyd = self.seed
        self.routes = RouteDriver(vip, netns=netns)
        self._move_local_rule()
        self.forwarder = UserspaceForwarder(vip, netns=netns)
        self.forwarder.start()

    def _ip(self, *args: str) -> str:
        return run(["ip", *(["-n", self.netns] if self.netns else []), *args])

    def _move_local_rule(self) -> None:
        lines = [line.split() for line in self._ip("rule", "show").splitlines()]
        local = {int(w[0].rstrip(":")) for w in lines if w[-2:] == ["lookup", "local"]}
        if LOCAL_RULE_PREF not in local:
            self._ip("rule", "add", "pref", str(LOCAL_RULE_PREF), "lookup", "local")
        if 0 in local:
            self._ip("rule", "del", "pref", "0", "lookup", "local")

    def apply(self, targets: Targets) -> None:
        self.keyd = keyd_for(targets, self.seed)
        self.routes.sync_backends(backend_marks(self.marks, self.keyd, targets.nodes))
        self.forwarder.steering = Steering(
            keyd=keyd_bucket_marks(self.marks, self.keyd),
            spis={spi: self.marks.mark(n) for spi, n in targets.spis.items()},
            fallback=[self.marks.mark(n) for n in targets.fallback])
        self.routes.sync_clients(targets.client_routes())

    def resync(self) -> None:
        self.routes = RouteDriver(self.routes.vip, netns=self.netns)

    def map_check(self) -> SpiMapCheck | None:
        return None    # the forwarder's table is the process's own: nothing to drift

    def close(self) -> None:
        self.forwarder.close()
