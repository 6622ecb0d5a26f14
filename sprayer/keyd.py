"""keyd instances as the target of IKE: which of them are live, and which one a client reaches.

IKE (UDP 500, and 4500 behind the zero non-ESP marker) goes to one keyd instance chosen by a
hash of the client's address (not its port, which changes when the client floats from 500 to
4500 after IKE_SA_INIT). Any instance can continue any IKE SA (its state is in
etcd), so a move is safe; but an exchange should stay on one instance while that instance
lives. The hash therefore does not pick among the N instances directly (`mod N` would move
almost every client whenever N changes): it picks one of `BUCKETS` buckets, and each bucket
belongs to one instance by rendezvous hashing over the instances' names. An instance leaving
moves only its own buckets; one joining takes buckets only for itself.

Which instances are live: the `keyd/<id>` records (each held on its instance's lease, so a
dead instance's record is gone within its TTL) minus the instances a probe found refusing;
when that leaves none, the configured addresses (the seed). The probe (`RefusalProbe`) sends a
NAT keepalive (RFC 3948 §2.3: one 0xFF byte, which keyd drops and counts) to VIP:4500 along the
instance's own mark route; a host whose keyd process is gone answers ICMP port unreachable,
which takes the instance out at once instead of after its lease. A refused instance stays out
until it registers again (a new record) or for `REFUSAL_HOLD_S`, longer than keyd's lease TTL,
so that a dead instance's record has gone by then and a false refusal heals itself.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from cluster import rendezvous
from cluster.esp.packet import KEEPALIVE
from cluster.host import DriverError, inside_netns
from sprayer.backends import Backend, MarkAllocator, keyd_backends
from sprayer.nft import NATT_PORT
from sprayer.view import Targets

log = logging.getLogger("sprayer.keyd")

#: hash buckets IKE is spread over (each owned by one live instance)
BUCKETS = 64
#: how long a refusing instance stays out if it does not register again (keyd's lease: 5 s)
REFUSAL_HOLD_S = 10.0


#: keeps the bucket draws apart from other uses of the hash
RENDEZVOUS_PERSON = b"ipsc-keyd"


def bucket_owners(names: Iterable[str], buckets: int = BUCKETS) -> list[str]:
    """For each bucket 0..buckets-1 the name that owns it (rendezvous hashing; pure, the same
    on every sprayer). Empty when `names` is."""
    ordered = sorted(set(names))
    if not ordered:
        return []
    return [rendezvous.highest(str(b), ((n, 1.0) for n in ordered), RENDEZVOUS_PERSON) or ""
            for b in range(buckets)]


def keyd_for(targets: Targets, seed: list[Backend]) -> list[Backend]:
    """The keyd back ends IKE goes to: the live instances, else the configured seed."""
    return keyd_backends(targets.keyd) if targets.keyd else seed


def keyd_bucket_marks(marks: MarkAllocator, keyd: Sequence[Backend]) -> list[int]:
    """The mark of each IKE hash bucket's keyd instance, bucket by bucket."""
    return [marks.mark(name) for name in bucket_owners(k.name for k in keyd)]


@dataclass(slots=True)
class Refusals:
    """Instances whose probe was refused, and since when (pure: time is passed in)."""

    hold_s: float = REFUSAL_HOLD_S
    since: dict[str, float] = field(default_factory=dict)

    def refused(self, keyd_id: str, now: float) -> bool:
        """Note a refusal; True if the instance was not out already."""
        new = keyd_id not in self.since
        self.since.setdefault(keyd_id, now)
        return new

    def registered(self, keyd_id: str) -> bool:
        """The instance wrote its record again (a restart): it is back. True if it was out."""
        return self.since.pop(keyd_id, None) is not None

    def out(self, now: float) -> frozenset[str]:
        for k in [k for k, t in self.since.items() if now - t >= self.hold_s]:
            del self.since[k]
        return frozenset(self.since)

    def clear(self) -> None:
        self.since.clear()


class RefusalProbe:
    """One connected UDP socket per keyd instance, marked with that instance's mark, sending a
    NAT keepalive to VIP:4500 each round. The router's `ip rule fwmark` sends it to that
    instance; ICMP port unreachable from there (its keyd process is gone) comes back as
    ECONNREFUSED on the socket. Silence means nothing: a live keyd never answers a keepalive,
    and a dead host does not answer at all (its lease covers that).

    `netns` creates the sockets inside that namespace (where the sprayer's routes are)."""

    def __init__(self, vip: str, *, netns: str | None = None, port: int = NATT_PORT) -> None:
        self.vip = vip
        self.netns = netns
        self.port = port
        self._socks: dict[str, tuple[int, socket.socket]] = {}

    def round(self, targets: Mapping[str, int]) -> list[str]:
        """Probe every instance (id → mark); return the ids refused since the last round."""
        for k in [k for k in self._socks if k not in targets]:
            self._socks.pop(k)[1].close()
        refused = []
        for keyd_id, mark in targets.items():
            sock = self._sock(keyd_id, mark)
            if sock is None:
                continue
            try:
                with contextlib.suppress(BlockingIOError, InterruptedError):
                    while True:   # the answer to an earlier keepalive, if one came
                        sock.recv(64)
                sock.send(KEEPALIVE)  # RFC 3948 §2.3: keyd ignores it on 4500
            except ConnectionRefusedError:
                refused.append(keyd_id)
            except OSError:
                pass          # unreachable from here just now: the lease decides
        return refused

    def _sock(self, keyd_id: str, mark: int) -> socket.socket | None:
        held = self._socks.get(keyd_id)
        if held is not None and held[0] == mark:
            return held[1]
        if held is not None:
            held[1].close()
            del self._socks[keyd_id]
        try:
            with inside_netns(self.netns):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
                s.setblocking(False)
                s.connect((self.vip, self.port))
            except OSError:
                s.close()
                raise
        except (DriverError, OSError) as exc:   # no probe for it, no harm: the lease decides
            log.debug("keyd probe socket for %s: %s", keyd_id, exc)
            return None
        self._socks[keyd_id] = (mark, s)
        return s

    def close(self) -> None:
        for _, s in self._socks.values():
            s.close()
        self._socks.clear()
