"""The sockets a kernel-data-plane node reads itself, on one thread: what the kernel does
not carry for it.

- VIP:4500 with UDP_ENCAP_ESPINUDP (RFC 3948): the kernel takes every ESP packet off this
  socket into XFRM and drops NAT keepalives; what is left for the socket is IKE behind the
  non-ESP marker, which goes to the stray-IKE relay (cluster.node.relay) as it arrives.
- VIP:500 (stray IKE, relayed) and the health port (the sprayer's probes, READY), as the
  userspace data path answers them.
- The XFRM aevents subscription (cluster.xfrm.kernel.Aevents): replay-state events, handed
  to `on_aevents`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import subprocess
import threading
from collections.abc import Callable

from cluster.xfrm import AeEvent
from cluster.xfrm.kernel import Aevents
from cluster.xfrm.state import UDP_ENCAP_ESPINUDP

log = logging.getLogger("cluster.node.kernel")

SOL_UDP = 17
UDP_ENCAP = 100
BATCH = 256
MAX_PACKET = 65535
Address = tuple[str, int]


def udp_socket(host: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
    except OSError as e:
        s.close()
        raise OSError(e.errno, f"cannot bind {host}:{port}: {e.strerror}") from None
    s.setblocking(False)
    return s


def encap_socket(host: str, port: int) -> socket.socket:
    """UDP on (host, port) whose ESP the kernel decapsulates (UDP_ENCAP_ESPINUDP)."""
    s = udp_socket(host, port)
    s.setsockopt(SOL_UDP, UDP_ENCAP, UDP_ENCAP_ESPINUDP)
    return s


class KernelSockets:
    """`start()` runs the loop; `stop()` ends it and closes every socket."""

    def __init__(self, *, vip: str, natt_port: int, health: Address | None,
                 health_reply: Callable[[bytes], bytes | None],
                 ike_port: int | None, on_ike: Callable[[bytes, Address, int], None] | None,
                 on_aevents: Callable[[list[AeEvent]], None]) -> None:
        self.natt_port = natt_port
        self.encap = encap_socket(vip, natt_port)
        self.health = udp_socket(*health) if health else None
        self.ike = udp_socket(vip, ike_port) if ike_port else None
        self.aevents = Aevents()
        self._health_reply = health_reply
        self._on_ike = on_ike
        self._on_aevents = on_aevents
        self.health_probes = 0
        self.ike_relayed = 0
        self._stop = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="node-kernel-io", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(5)
        for s in (self.encap, self.health, self.ike, self.aevents):
            if s is not None:
                s.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _loop(self) -> None:
        handlers: dict[int, Callable[[], None]] = {
            self._wake_r: lambda: None,
            self.encap.fileno(): lambda: self._drain_ike(self.encap),
            self.aevents.fileno(): self._drain_aevents,
        }
        if self.health is not None:
            handlers[self.health.fileno()] = self._drain_health
        if self.ike is not None:
            ike = self.ike
            handlers[ike.fileno()] = lambda: self._drain_ike(ike)
        ep = select.epoll()
        for fd in handlers:
            ep.register(fd, select.EPOLLIN)
        try:
            while not self._stop:
                for fd, _ in ep.poll(0.2):
                    try:
                        handlers[fd]()
                    except Exception as e:  # a bug must not stop the health answers
                        log.error("kernel plane socket handler failed: %s: %s",
                                  type(e).__name__, e)
                        log.debug("kernel plane socket handler failed", exc_info=True)
        finally:
            ep.close()

    def _drain_aevents(self) -> None:
        events = self.aevents.read()
        if events:
            self._on_aevents(events)

    def _drain_ike(self, sock: socket.socket) -> None:
        port = sock.getsockname()[1]
        for _ in range(BATCH):
            try:
                data, addr = sock.recvfrom(MAX_PACKET)
            except BlockingIOError:
                return
            except OSError:  # ICMP errors surfacing on the socket
                continue
            if self._on_ike is not None:
                self.ike_relayed += 1
                self._on_ike(data, addr, port)

    def _drain_health(self) -> None:
        assert self.health is not None
        for _ in range(BATCH):
            try:
                data, addr = self.health.recvfrom(512)
            except BlockingIOError:
                return
            reply = self._health_reply(data)
            if reply is not None:
                self.health_probes += 1
                with contextlib.suppress(OSError):
                    self.health.sendto(reply, addr)


# -- the node's XFRM interface -----------------------------------------------------------------

def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


def create_interface(name: str, if_id: int, mtu: int) -> None:
    """The XFRM interface (`ip link add NAME type xfrm if_id ID`) decrypted packets come in
    on and client routes point into; one left by an earlier run is made anew. OSError with
    ip's message if the kernel refuses (no xfrm_interface module)."""
    _ip("link", "del", name)
    r = _ip("link", "add", name, "type", "xfrm", "if_id", str(if_id))
    if r.returncode != 0:  # kernels before 5.x want an underlying device
        r = _ip("link", "add", name, "type", "xfrm", "dev", "lo", "if_id", str(if_id))
    if r.returncode != 0:
        raise OSError(f"cannot create XFRM interface {name}: {r.stderr.strip()}")
    # decrypted packets arrive from client addresses whose return route may point elsewhere
    # during a hand-off: no reverse-path filter on this device; no IPv6 router solicitations
    for path, value in ((f"/proc/sys/net/ipv4/conf/{name}/rp_filter", "0"),
                        (f"/proc/sys/net/ipv6/conf/{name}/router_solicitations", "0")):
        with contextlib.suppress(OSError), open(path, "w") as f:
            f.write(value)
    r = _ip("link", "set", "dev", name, "mtu", str(mtu), "up")
    if r.returncode != 0:
        raise OSError(f"cannot bring XFRM interface {name} up: {r.stderr.strip()}")


def remove_interface(name: str) -> None:
    _ip("link", "del", name)
