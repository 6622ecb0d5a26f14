"""The project's IKEv2 initiator (keyd.ike.Initiator) on real UDP sockets, blocking.

For integration tests and the benchmark: it talks to a keyd (or any IKEv2 responder) the way
a client does — from `local_ip`, IKE from an ephemeral or given port, NAT-T from `natt_port`,
which must equal the responder's (the core floats both ends to the same port, as on the
wire where both are 4500).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import time
from collections.abc import Callable

from cryptography import x509

from .ike.config import Credentials, InitiatorConfig
from .ike.core import Datagram
from .ike.events import (
    ChildSaEstablished,
    ExchangeFailed,
    IkeEvent,
    IkeSaEstablished,
    Redirected,
)
from .ike.initiator import Initiator

Address = tuple[str, int]


class ExchangeTimeout(Exception):
    """The responder did not complete the exchange in time."""


class IkeClient:
    def __init__(self, config: InitiatorConfig, local_ip: str, remote: Address,
                 natt_port: int, ike_port: int = 0) -> None:
        self.remote = remote
        self.core = Initiator(config)
        self.events: list[IkeEvent] = []
        self.sent: list[Datagram] = []           # every datagram sent, in order
        self.received: list[bytes] = []          # every datagram received, in order
        self._sel = selectors.DefaultSelector()
        self._socks: dict[int, socket.socket] = {}
        for port in (ike_port, natt_port):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((local_ip, port))
            sock.setblocking(False)
            bound = sock.getsockname()[1]
            self._socks[bound] = sock
            self._sel.register(sock, selectors.EVENT_READ, bound)
        self.local: Address = (local_ip, next(iter(self._socks)))

    @classmethod
    def psk(cls, psk: bytes, identity: str, gateway_id: str | None, local_ip: str,
            remote: Address, natt_port: int, ike_proposal: str = "aes128gcm16-prfsha256-x25519",
            esp_proposal: str = "aes128gcm16", cas: tuple[x509.Certificate, ...] = (),
            **kwargs: object) -> IkeClient:
        """A client that authenticates with a PSK; `cas` verify a gateway that answers with
        a certificate."""
        config = InitiatorConfig(identity=identity, credentials=Credentials(psk=psk, cas=cas),
                                 remote_identity=gateway_id, ike_proposals=(ike_proposal,),
                                 esp_proposals=(esp_proposal,), natt_port=natt_port,
                                 **kwargs)  # type: ignore[arg-type]
        return cls(config, local_ip, remote, natt_port)

    def resend(self, datagram: Datagram, timeout_s: float = 10.0) -> bytes:
        """Send a datagram again as it was (a retransmission) and return the next datagram
        that comes back, without handing it to the core."""
        sock = self._socks[datagram.src[1]]
        sock.sendto(datagram.data, datagram.dst)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for key, _ in self._sel.select(0.2):
                conn = key.fileobj
                assert isinstance(conn, socket.socket)
                with contextlib.suppress(BlockingIOError):
                    return conn.recvfrom(65535)[0]
        raise ExchangeTimeout(f"no answer to the retransmission in {timeout_s:g}s")

    def close(self) -> None:
        for sock in self._socks.values():
            with contextlib.suppress(OSError):
                self._sel.unregister(sock)
            sock.close()
        self._sel.close()

    def __enter__(self) -> IkeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- pumping ---------------------------------------------------------------------------
    def _flush(self) -> None:
        while (event := self.core.next_event()) is not None:
            self.events.append(event)
        for d in self.core.datagrams_to_send():
            sock = self._socks.get(d.src[1])
            if sock is None:
                raise RuntimeError(f"no socket bound to port {d.src[1]}")
            with contextlib.suppress(BlockingIOError):
                sock.sendto(d.data, d.dst)
            self.sent.append(d)

    def pump(self, done: Callable[[], bool], timeout_s: float) -> None:
        """Move datagrams (and the core's timers) until `done()` or the timeout."""
        deadline = time.monotonic() + timeout_s
        self._flush()
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise ExchangeTimeout(f"no answer from {self.remote[0]} in {timeout_s:g}s")
            timer = self.core.get_timer()
            wait = left if timer is None else max(0.0, min(left, timer - time.time()))
            for key, _ in self._sel.select(min(wait, 0.5)):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                port = key.data
                while True:
                    try:
                        data, src = sock.recvfrom(65535)
                    except BlockingIOError:
                        break
                    self.received.append(data)
                    self.core.receive_datagram(data, (src[0], src[1]),
                                               (self.local[0], port), time.time())
            if timer is not None and time.time() >= timer:
                self.core.handle_timer(time.time())
            self._flush()

    def _idle(self) -> bool:
        """No request of ours is waiting for its answer, on any IKE SA (after an IKE rekey
        the DELETE of the old one is in flight on the old one)."""
        return not any(self.core.busy(i) for i in self.core.ike_sa_ids())

    def _failed(self) -> ExchangeFailed | None:
        return next((e for e in self.events if isinstance(e, ExchangeFailed)), None)

    def _wait(self, timeout_s: float) -> None:
        mark = len(self.events)
        self.pump(lambda: self._idle() or self._failed() is not None, timeout_s)
        failed = next((e for e in self.events[mark:] if isinstance(e, ExchangeFailed)), None)
        if failed is not None:
            raise ExchangeTimeout(f"exchange failed: {failed.reason}")

    # -- exchanges -------------------------------------------------------------------------
    def connect(self, timeout_s: float = 30.0) -> IkeSaEstablished:
        """IKE_SA_INIT + IKE_AUTH with the first Child SA; the IkeSaEstablished event."""
        self.core.connect(self.local, self.remote, time.time())
        self.pump(lambda: any(isinstance(e, IkeSaEstablished | ExchangeFailed)
                              for e in self.events), timeout_s)
        # the Child SA of IKE_AUTH comes in the same step
        est = next((e for e in self.events if isinstance(e, IkeSaEstablished)), None)
        if est is None:
            failed = self._failed()
            raise ExchangeTimeout(f"not established: {failed.reason if failed else '?'}")
        return est

    def children(self) -> list[ChildSaEstablished]:
        return [e for e in self.events if isinstance(e, ChildSaEstablished)]

    def rekey_child(self, spi_in: int, pfs: bool = False, timeout_s: float = 30.0) -> None:
        self.core.rekey_child(spi_in, time.time(), pfs=pfs)
        self._wait(timeout_s)   # CREATE_CHILD_SA
        self._wait(timeout_s)   # then the DELETE of the old Child SA

    def rekey_ike(self, timeout_s: float = 30.0) -> None:
        self.core.rekey_ike(time.time())
        self._wait(timeout_s)
        self._wait(timeout_s)

    def liveness(self, timeout_s: float = 30.0) -> None:
        self.core.liveness(time.time())
        self._wait(timeout_s)

    def delete(self, timeout_s: float = 30.0) -> None:
        self.core.delete(time.time())
        self._wait(timeout_s)

    def move(self, local_ip: str, timeout_s: float = 30.0) -> None:
        """MOBIKE (RFC 4555 §3.5): the client's address changes to `local_ip` (its sockets
        are bound there afresh, same ports) and it says so with UPDATE_SA_ADDRESSES; returns
        once the update is answered (the gateway's return routability check, if any, is
        answered while the caller pumps on)."""
        ports = list(self._socks)
        for sock in self._socks.values():
            self._sel.unregister(sock)
            sock.close()
        self._socks = {}
        for port in ports:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((local_ip, port))
            sock.setblocking(False)
            self._socks[port] = sock
            self._sel.register(sock, selectors.EVENT_READ, port)
        sa = self.core.sa
        self.local = (local_ip, self.local[1])
        self.core.update_sa_addresses(sa.id, (local_ip, sa.local[1]), sa.peer, time.time())
        self._wait(timeout_s)

    def redirect_target(self, timeout_s: float = 30.0) -> Redirected:
        """IKE_SA_INIT answered with REDIRECT (RFC 5685 §4.2): where the gateway sends us."""
        self.core.connect(self.local, self.remote, time.time())
        self.pump(lambda: any(isinstance(e, Redirected | IkeSaEstablished | ExchangeFailed)
                              for e in self.events), timeout_s)
        got = next((e for e in self.events if isinstance(e, Redirected)), None)
        if got is None:
            raise ExchangeTimeout("not redirected")
        return got
