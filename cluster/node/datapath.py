"""The node's data plane: UDP on VIP:4500 (and raw ESP) ⇄ ESP core ⇄ TUN, on one thread.

The I/O shell of DESIGN.md: it only moves bytes between the sockets, the TUN device and the
ESP core (`cluster.esp`). One thread owns every SA object and runs an epoll loop; the control
side (etcd watches, ownership, checkpoints) never touches an SA directly but hands the thread
closures through `call` / `run`, executed between packet batches. Nothing here waits on etcd.

Inbound: decrypt, check the inner source against the SA's selectors (in the core), check the
inner packet against the SA's traffic policy if it has one (cluster.policy), write to TUN;
follow the client's address only when a packet authenticated (NAT rebinding).
Outbound: read TUN, find the owned SA by the inner destination (client virtual IP), check
its policy, seal, send to the client's current address — unless fenced or past the SA's
send limit. An SA without a policy costs one attribute test per receive batch inbound and
one per packet outbound.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import select
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TypeVar

from cluster.esp import DropReason, EspUsageError, SaTable
from cluster.esp.table import Decrypted, Dropped, IkeMessage
from cluster.node.hold import HoldBuffer
from cluster.node.mobility import follows_esp
from cluster.node.outbound import OutboundTable
from cluster.node.sa import Address, NodeSa
from cluster.policy import PacketFilter

log = logging.getLogger("cluster.node.datapath")

T = TypeVar("T")
BATCH = 256  # packets handled per readiness event before looking at the other fds
MAX_PACKET = 65535
SOCKET_BUFFER = 4 << 20
# UDP GRO (Linux 5.0+): the kernel may hand several datagrams of one flow to one recvmsg;
# a cmsg (SOL_UDP, UDP_GRO) then gives the size of each (the last may be shorter)
_SOL_UDP = 17
_UDP_GRO = 104
_GRO_CMSG_SPACE = socket.CMSG_SPACE(4)
# UDP GSO (Linux 4.18+): one sendmsg, the kernel cuts it into datagrams of the given size
_UDP_SEGMENT = 103
_GSO_SEGMENTS = 64  # the kernel's UDP_MAX_SEGMENTS
_GSO_BYTES = 65000  # a datagram's payload limit, with room for the headers
_NATIVE = sys.byteorder


@dataclass(slots=True)
class Totals:
    """Data-plane counters; read by the metrics collector from another thread."""

    packets_in: int = 0
    bytes_in: int = 0
    packets_out: int = 0
    bytes_out: int = 0
    rebinds: int = 0
    tun_errors: int = 0
    send_errors: int = 0
    health_probes: int = 0
    ike_relayed: int = 0
    reinjected: int = 0  # held packets given back to the kernel after a hand-off away
    coalesced: int = 0  # UDP datagrams that arrived several to one receive call (GRO)
    udp_receives: int = 0  # receive calls on UDP/4500 that returned a buffer


class Datapath:
    """Sockets, TUN and SAs; `start()` runs the loop on its own thread."""

    def __init__(self, *, vip: str, natt_port: int, tun_fd: int,
                 health: tuple[str, int] | None = None,
                 health_reply: Callable[[bytes], bytes | None] | None = None,
                 raw_esp: bool = True, ike_port: int | None = None,
                 on_unknown_spi: Callable[[int], None] | None = None,
                 on_ike: Callable[[bytes, Address, int], None] | None = None,
                 fence_grace_s: float = 1.0) -> None:
        self.table: SaTable[NodeSa] = SaTable()
        #: client key (packed address, or a subnet) → the SA this node sends to it on (owned,
        #: not fenced); hosts by exact match, subnets by longest prefix
        self.outbound: OutboundTable[NodeSa] = OutboundTable()
        self.drops: Counter[DropReason] = Counter()  # outbound and socket-level drops
        #: packets a traffic policy refused: (policy name, DropVerdict value, "in" | "out")
        self.policy_drops: Counter[tuple[str, str, str]] = Counter()
        #: outbound packets kept, not dropped, while a hand-off of their client completes
        self.holds = HoldBuffer()
        self.totals = Totals()
        #: set while the lease is unconfirmed (etcd silent): send only on SAs whose client was
        #: heard from within `fence_grace_s` (docs/node.md, "Fencing")
        self.detached = False
        self.fence_grace_s = fence_grace_s
        self._on_unknown_spi = on_unknown_spi or (lambda spi: None)
        self._on_ike = on_ike
        self._health_reply = health_reply
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stop = False
        self._thread: threading.Thread | None = None
        self.tun_fd = tun_fd
        self.udp = _udp(vip, natt_port)
        with contextlib.suppress(OSError):  # a kernel without UDP GRO: one datagram per call
            self.udp.setsockopt(_SOL_UDP, _UDP_GRO, 1)
        self._gso = True  # until the kernel refuses UDP_SEGMENT once
        self.health = _udp(*health) if health else None
        self.ike = _udp(vip, ike_port) if ike_port else None
        self.esp: socket.socket | None = None
        if raw_esp:
            try:
                self.esp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ESP)
                self.esp.bind((vip, 0))
                self.esp.setblocking(False)
            except OSError as e:  # no raw sockets (no CAP_NET_RAW): ESP-in-UDP only
                log.warning("raw ESP socket unavailable (%s): ESP-in-UDP only", e.strerror)
                self.esp = None

    # -- control side ----------------------------------------------------------------------
    def call(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the data-path thread soon; never blocks."""
        self._commands.put(fn)
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")

    def run(self, fn: Callable[[], T], timeout_s: float = 5.0) -> T:
        """Run `fn` on the data-path thread and return its result."""
        if self._thread is None or not self._thread.is_alive():
            return fn()
        fut: Future[T] = Future()

        def task() -> None:
            try:
                fut.set_result(fn())
            except BaseException as e:  # handed back to the caller
                fut.set_exception(e)
        self.call(task)
        return fut.result(timeout_s)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="datapath", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(5)
        for s in (self.udp, self.health, self.ike, self.esp):
            if s is not None:
                s.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- SA operations (data-path thread) ---------------------------------------------------
    def install(self, sa: NodeSa) -> NodeSa | None:
        """Hold `sa`; a replaced SA keeps nothing (its successor is a new object)."""
        old = self.table.install(sa)
        if old is not None:
            self._forget(old)
        return old

    def remove(self, spi_in: int) -> NodeSa | None:
        sa = self.table.remove(spi_in)
        if sa is not None:
            self._forget(sa)
        return sa

    def _forget(self, sa: NodeSa) -> None:
        t = self.totals
        t.packets_in += sa.packets_in
        t.bytes_in += sa.bytes_in
        t.packets_out += sa.packets_out
        t.bytes_out += sa.bytes_out
        for addr in sa.client_addresses:
            if self.outbound.get(addr) is sa:
                self.outbound.pop(addr)
                self._reselect(addr)

    def send_on(self, sa: NodeSa) -> None:
        """Start sending on `sa` (it has its take-over counters and send limit)."""
        for addr in sa.client_addresses:
            cur = self.outbound.get(addr)
            if cur is None or cur.created_at <= sa.created_at:  # newest Child SA wins (rekey)
                self.outbound.set(addr, sa)
        self.flush(sa)

    def stop_sending(self, sa: NodeSa) -> None:
        sa.send_limit = 0
        for addr in sa.client_addresses:
            if self.outbound.get(addr) is sa:
                self.outbound.pop(addr)
                self._reselect(addr)

    def _reselect(self, addr: bytes) -> None:
        best = None
        for o in self.table.by_spi.values():
            if o.send_limit and addr in o.client_addresses and (
                    best is None or o.created_at > best.created_at):
                best = o
        if best is not None:
            self.outbound.set(addr, best)

    def hold(self, addresses: Iterable[bytes], for_s: float) -> None:
        """Keep (cluster.node.hold, for `for_s`) the outbound packets for these client
        addresses that have no SA to go out on, instead of dropping them: a client in
        hand-off. `send_on` sends them once this node sends for the client; `reinject`
        gives them back to the kernel once the address is routed elsewhere; `release`
        drops them."""
        self.holds.hold(addresses, time.monotonic() + for_s)

    def release(self, addresses: Iterable[bytes]) -> None:
        """Stop holding; what was held is dropped (`not_owner`)."""
        for addr in addresses:
            pending = self.holds.take(addr)
            if pending:
                self.drops[DropReason.NOT_OWNER] += len(pending)

    def reinject(self, addresses: Iterable[bytes]) -> int:
        """Stop holding and write what was held back into the TUN device: the kernel routes
        it again, now along the client's new route (the new owner). Returns the count."""
        n = 0
        for addr in addresses:
            for pkt in self.holds.take(addr) or ():
                try:
                    os.write(self.tun_fd, pkt)
                    n += 1
                except OSError:
                    self.totals.tun_errors += 1
        self.totals.reinjected += n
        return n

    def flush(self, sa: NodeSa) -> None:
        """Send the packets held for `sa`'s client addresses, as far as its send limit
        allows (the rest stay held until `flush` is called again after a new limit)."""
        now = time.monotonic()
        for addr in sa.client_addresses:
            cur = self.holds.held.get(addr)
            if cur is None or self.outbound.get(addr) is not sa:
                continue
            pending = cur[1]
            i = 0
            while i < len(pending) and sa.out_seq + 1 < sa.send_limit:
                self._send(sa, pending[i], now)
                i += 1
            del pending[:i]
            if not pending:
                self.holds.take(addr)

    def fence_all(self) -> None:
        for sa in list(self.table.by_spi.values()):
            self.stop_sending(sa)

    def sas(self) -> list[NodeSa]:
        return list(self.table.by_spi.values())

    # -- the loop ---------------------------------------------------------------------------
    def _loop(self) -> None:
        ep = select.epoll()
        handlers: dict[int, Callable[[], None]] = {
            self._wake_r: self._drain_commands, self.udp.fileno(): self._drain_udp,
            self.tun_fd: self._drain_tun,
        }
        if self.health is not None:
            handlers[self.health.fileno()] = self._drain_health
        if self.ike is not None:
            handlers[self.ike.fileno()] = self._drain_ike
        if self.esp is not None:
            handlers[self.esp.fileno()] = self._drain_raw_esp
        for fd in handlers:
            ep.register(fd, select.EPOLLIN)
        try:
            while not self._stop:
                for fd, _ in ep.poll(0.1):
                    try:
                        handlers[fd]()
                    except Exception as e:  # a bug must not stop forwarding: log, keep going
                        log.error("data path handler failed: %s: %s", type(e).__name__, e)
                        log.debug("data path handler failed", exc_info=True)
        finally:
            ep.close()

    def _drain_commands(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 4096)
        while True:
            try:
                fn = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                fn()
            except Exception as e:
                log.error("data path command failed: %s: %s", type(e).__name__, e)
                log.debug("data path command failed", exc_info=True)

    def _drain_udp(self) -> None:
        recv = self.udp.recvmsg
        table = self.table
        by_wire = table.by_wire_spi
        dropped = table.dropped
        receive = table.receive
        write = os.write
        tun = self.tun_fd
        totals = self.totals
        inner: list[bytes] = []
        drops: list[DropReason] = []
        now = time.monotonic()
        for _ in range(BATCH):
            try:
                buf, anc, _flags, addr = recv(MAX_PACKET, _GRO_CMSG_SPACE)
            except BlockingIOError:
                return
            except OSError as e:  # e.g. ICMP errors surfacing as ECONNREFUSED
                if e.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                    continue
                raise
            totals.udp_receives += 1
            # UDP GRO: several datagrams of one flow in one buffer, each `size` bytes but
            # the last (which may be shorter); without the cmsg, one datagram
            n = len(buf)
            size = n
            if anc:
                for level, kind, value in anc:
                    if level == _SOL_UDP and kind == _UDP_GRO and len(value) >= 4:
                        size = int.from_bytes(value[:4], _NATIVE) or n
                if size < n:
                    totals.coalesced += -(-n // size)
            off = 0
            while off < n:
                sa = by_wire.get(buf[off:off + 4])
                if sa is not None:
                    # the hot path: a run of ESP packets for an SA we hold, opened in one
                    # call, no event object per packet; each packet is dropped alone
                    # (it opens at least the packet at `off`: its SPI is the one it matched)
                    off = sa.open_run(buf, off, size, now, inner, drops)
                    if drops:
                        for reason in drops:
                            dropped(sa, reason)
                        drops.clear()
                    if inner:
                        policy = sa.policy
                        if policy is not None:
                            self._police(policy, inner)
                        for pkt in inner:
                            try:
                                write(tun, pkt)
                            except OSError:
                                totals.tun_errors += 1
                        inner.clear()
                        if addr != sa.peer:  # only after a packet authenticated
                            self._rebind(sa, addr)
                    continue
                data = buf[off:off + size] if size < n else buf
                off += size
                self._receive_other(receive(data, now), data, addr)

    def _police(self, policy: PacketFilter, inner: list[bytes]) -> None:
        """Keep in `inner` only what `policy` lets through from the client; count the rest."""
        verdict = policy.verdict_in
        kept = []
        for pkt in inner:
            reason = verdict(pkt)
            if reason is None:
                kept.append(pkt)
            else:
                self.policy_drops[(policy.name, reason.value, "in")] += 1
        inner[:] = kept

    def _forward(self, sa: NodeSa, pkt: bytes) -> None:
        """One decrypted packet to the TUN device, if the SA's policy lets it through."""
        policy = sa.policy
        if policy is not None:
            reason = policy.verdict_in(pkt)
            if reason is not None:
                self.policy_drops[(policy.name, reason.value, "in")] += 1
                return
        try:
            os.write(self.tun_fd, pkt)
        except OSError:
            self.totals.tun_errors += 1

    def _receive_other(self, ev: object, data: bytes, addr: Address) -> None:
        """What `SaTable.receive` made of a UDP/4500 payload off the hot path."""
        if isinstance(ev, Decrypted):
            self._forward(ev.sa, ev.inner)  # type: ignore[arg-type]
            if addr != ev.sa.peer:  # type: ignore[attr-defined]
                self._rebind(ev.sa, addr)  # type: ignore[arg-type]
        elif isinstance(ev, Dropped):
            if ev.reason is DropReason.UNKNOWN_SPI and ev.spi:
                self._on_unknown_spi(ev.spi)
        elif isinstance(ev, IkeMessage) and self._on_ike is not None:
            self.totals.ike_relayed += 1
            self._on_ike(data, addr, self.udp.getsockname()[1])

    def _drain_raw_esp(self) -> None:
        assert self.esp is not None
        recv = self.esp.recvfrom
        receive = self.table.receive_esp
        now = time.monotonic()
        for _ in range(BATCH):
            try:
                data, (host, _) = recv(MAX_PACKET)
            except BlockingIOError:
                return
            ihl = (data[0] & 0x0F) * 4
            ev = receive(data[ihl:], now)
            if isinstance(ev, Decrypted):
                self._forward(ev.sa, ev.inner)  # type: ignore[arg-type]
                if (host, 0) != ev.sa.peer:  # type: ignore[attr-defined]
                    self._rebind(ev.sa, (host, 0))  # type: ignore[arg-type]
            elif isinstance(ev, Dropped) and ev.reason is DropReason.UNKNOWN_SPI and ev.spi:
                self._on_unknown_spi(ev.spi)

    def _rebind(self, sa: NodeSa, addr: Address) -> None:
        """The client's address changed (NAT rebinding, RFC 3948 / RFC 7296 §2.23); only ever
        called after the packet authenticated, so a spoofed source cannot move the SA. A
        MOBIKE client's SA moves by its record only (cluster/node/mobility.py)."""
        if not follows_esp(sa.record):
            return
        for o in self.table.by_spi.values():
            if o.ike_sa_id == sa.ike_sa_id:
                o.peer = addr
        sa.rebinds += 1
        self.totals.rebinds += 1

    def _drain_tun(self) -> None:
        read = os.read
        tun = self.tun_fd
        out = self.outbound.hosts
        subnets = self.outbound
        drops = self.drops
        held = self.holds.held
        keep = self.holds.keep
        now = time.monotonic()
        # UDP GSO: consecutive ESP packets to one client, all of one size but the last
        # (which may be shorter), go out in one sendmsg (UDP_SEGMENT); `flush_batch` sends
        batch: list[bytes] = []
        batch_peer: Address | None = None
        batch_size = 0
        try:
            for _ in range(BATCH):
                try:
                    pkt = read(tun, MAX_PACKET)
                except BlockingIOError:
                    return
                if len(pkt) < 20:
                    drops[DropReason.MALFORMED] += 1
                    continue
                dst = pkt[16:20] if pkt[0] >> 4 == 4 else pkt[24:40]
                sa = out.get(dst)
                if sa is None and subnets.networks:
                    sa = subnets.longest_prefix(dst)  # a site behind the client (its selector)
                if sa is None:
                    if not (held and keep(dst, pkt, now, drops)):
                        drops[DropReason.NOT_OWNER] += 1
                    continue
                if sa.out_seq + 1 >= sa.send_limit:
                    if not (held and keep(dst, pkt, now, drops)):
                        drops[DropReason.CHECKPOINT_LAG] += 1
                    continue
                if self.detached and (sa.last_in_s is None
                                      or now - sa.last_in_s > self.fence_grace_s):
                    drops[DropReason.NOT_OWNER] += 1
                    continue
                if not (self._gso and sa.record.udp_encap):
                    self._send(sa, pkt, now)
                    continue
                esp = self._seal(sa, pkt, now)
                if esp is None:
                    continue
                n = len(esp)
                if batch and (sa.peer != batch_peer or n > batch_size or batch_size > len(
                        batch[-1]) or (len(batch) + 1) * batch_size > _GSO_BYTES
                        or len(batch) >= _GSO_SEGMENTS):
                    self._send_batch(batch, batch_peer, batch_size)  # type: ignore[arg-type]
                    batch = []
                if not batch:
                    batch_peer, batch_size = sa.peer, n
                batch.append(esp)
        finally:
            if batch:
                self._send_batch(batch, batch_peer, batch_size)  # type: ignore[arg-type]

    def _send_batch(self, batch: list[bytes], peer: Address, size: int) -> None:
        """ESP-in-UDP packets to one client in one system call (UDP GSO) when there are
        several; one by one if the kernel refuses GSO (then never again)."""
        if len(batch) > 1:
            try:
                self.udp.sendmsg([b"".join(batch)], [(_SOL_UDP, _UDP_SEGMENT,
                                                      size.to_bytes(2, _NATIVE))], 0, peer)
                return
            except OSError as e:
                if e.errno in (errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                    log.warning("UDP GSO refused (%s): sending one datagram per call",
                                e.strerror)
                    self._gso = False
                elif e.errno != errno.EINVAL:  # EINVAL: e.g. too big for the path's MTU
                    self.totals.send_errors += len(batch)
                    return
        sendto = self.udp.sendto
        for esp in batch:
            try:
                sendto(esp, peer)
            except OSError:
                self.totals.send_errors += 1

    def _seal(self, sa: NodeSa, pkt: bytes, now: float) -> bytes | None:
        """The ESP packet for `pkt` to the client of `sa`; None if its policy refuses the
        packet or the SA cannot send (both counted)."""
        policy = sa.policy
        if policy is not None:
            reason = policy.verdict_out(pkt)
            if reason is not None:
                self.policy_drops[(policy.name, reason.value, "out")] += 1
                return None
        try:
            return sa.seal(pkt, now)
        except EspUsageError as e:
            self.drops[DropReason.EXHAUSTED] += 1
            log.error("cannot send on SA %08x: %s", sa.spi_out, e)
            return None

    def _send(self, sa: NodeSa, pkt: bytes, now: float) -> None:
        esp = self._seal(sa, pkt, now)
        if esp is None:
            return
        try:
            if sa.record.udp_encap or self.esp is None:
                self.udp.sendto(esp, sa.peer)
            else:
                self.esp.sendto(esp, (sa.peer[0], 0))
        except OSError:
            self.totals.send_errors += 1

    def _drain_health(self) -> None:
        assert self.health is not None
        for _ in range(BATCH):
            try:
                data, addr = self.health.recvfrom(512)
            except BlockingIOError:
                return
            reply = self._health_reply(data) if self._health_reply else None
            if reply is not None:
                self.totals.health_probes += 1
                with contextlib.suppress(OSError):
                    self.health.sendto(reply, addr)

    def _drain_ike(self) -> None:
        assert self.ike is not None
        for _ in range(BATCH):
            try:
                data, addr = self.ike.recvfrom(MAX_PACKET)
            except BlockingIOError:
                return
            if self._on_ike is not None:
                self.totals.ike_relayed += 1
                self._on_ike(data, addr, self.ike.getsockname()[1])

    # -- counters for metrics and checkpoints (any thread: plain reads) ---------------------
    def io_totals(self) -> Totals:
        t = Totals(**{f: getattr(self.totals, f) for f in Totals.__dataclass_fields__})
        for sa in list(self.table.by_spi.values()):
            t.packets_in += sa.packets_in
            t.bytes_in += sa.bytes_in
            t.packets_out += sa.packets_out
            t.bytes_out += sa.bytes_out
        return t


def _udp(host: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
    try:
        s.bind((host, port))
    except OSError as e:
        s.close()
        raise OSError(e.errno, f"cannot bind {host}:{port}: {e.strerror}") from None
    s.setblocking(False)
    return s
