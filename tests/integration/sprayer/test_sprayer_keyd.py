"""IKE follows the live keyd instances: the sprayer daemon on a real etcd, nftables in the
driver lab's router, and two keyd stand-ins (UDP sockets on VIP:500 and VIP:4500 in their own
namespaces, registered in keyd/ on real leases).

- no keyd registered: IKE goes to the configured seed;
- two registered: IKE is spread over both by client address, each client always to the same
  instance — from port 500 and, after the NAT-T float, from 4500 — the chain in one table
  rebuild;
- an instance whose sockets close (its process died, its lease still alive): the probe takes it
  out while its record is still there; the survivor keeps its clients, the dead one's move;
- registered again: back in, its old clients back on it;
- an instance whose lease runs out while its sockets stay (a hung host): out within the TTL;
- a record with junk in it changes nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from test_sprayer_daemon import wait

from cluster.store.client import Store
from cluster.store.membership import Membership
from cluster.store.records import KeydRecord
from sprayer.apply import KernelApplier
from sprayer.daemon import Sprayer
from sprayer.settings import SprayerSettings

VIP = "203.0.113.10"
KEYD2 = "10.30.4.5"
CLIENTS = [f"198.51.100.{i}" for i in range(100, 140)]   # 40 clients, one address each


@pytest.fixture
def keyd2(lab: Any) -> Iterator[str]:
    """A second keyd host on its own back-end link (router back4 10.30.4.1)."""
    ns, r = lab.ns("keyd-2"), lab.ns("router")
    sh = lab.sh
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", r, "link", "add", "back4", "type", "veth", "peer", "name", "eth0",
           "netns", ns)
        sh("ip", "-n", r, "addr", "add", "10.30.4.1/24", "dev", "back4")
        sh("ip", "-n", r, "link", "set", "back4", "up")
        sh("ip", "-n", ns, "addr", "add", f"{KEYD2}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "addr", "add", f"{VIP}/32", "dev", "lo")
        sh("ip", "-n", ns, "route", "add", "default", "via", "10.30.4.1")
        for k in ("all", "default", "eth0", "lo"):
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv4.conf.{k}.rp_filter=0")
        sh("ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv4.conf.back4.rp_filter=0")
        yield "keyd-2"
    finally:
        sh("ip", "netns", "del", ns)


class Instance:
    """What the sprayer sees of one keyd: its sockets on VIP:500/4500 and its keyd/ record."""

    def __init__(self, lab: Any, store: Store, keyd_id: str, role: str, address: str) -> None:
        self.lab, self.store = lab, store
        self.id, self.role, self.address = keyd_id, role, address
        self.socks: list[Any] = []
        self.membership: Membership | None = None

    def serve(self) -> None:
        self.socks = [self.lab.udp(self.role, 500), self.lab.udp(self.role, 4500)]

    def die(self) -> None:
        for s in self.socks:
            s.close()
        self.socks = []

    def register(self) -> None:
        rec = KeydRecord(id=self.id, address=self.address, version="test",
                         started_at=time.time())
        self.membership = Membership(self.store, rec, 2, lambda ev: None)
        self.membership.start()

    def unregister(self, revoke: bool = True) -> None:
        if self.membership is not None:
            self.membership.stop(revoke=revoke)
            self.membership = None


@pytest.fixture
def clients(lab: Any) -> list[str]:
    """The sender namespace speaks from 40 client addresses."""
    for addr in CLIENTS:
        lab.sh("ip", "-n", lab.ns("sender"), "addr", "add", f"{addr}/24", "dev", "eth0")
    return CLIENTS


def _drain(sock: Any, into: dict[int, set[str]], who: str) -> None:
    while True:
        try:
            data = sock.recv(2048)
        except (TimeoutError, BlockingIOError):
            return
        into.setdefault(int.from_bytes(data[-2:], "big"), set()).add(who)


def where_ike_goes(lab: Any, instances: list[Instance]) -> dict[str, str]:
    """Send one IKE datagram from each client address's port 500, and one with the non-ESP
    marker from its port 4500 (the NAT-T float); which instance got both (or "-")."""
    send = {a: (lab.udp("sender", 500, addr=a), lab.udp("sender", 4500, addr=a))
            for a in CLIENTS}
    got: dict[int, set[str]] = {}
    try:
        for i, (s500, s4500) in enumerate(send.values()):
            s500.sendto(b"\0" * 28 + i.to_bytes(2, "big"), (VIP, 500))
            s4500.sendto(b"\0" * 32 + i.to_bytes(2, "big"), (VIP, 4500))
        time.sleep(0.3)
        for inst in instances:
            for sock in inst.socks:
                _drain(sock, got, inst.id)
    finally:
        for pair in send.values():
            for s in pair:
                s.close()
    out = {}
    for i, a in enumerate(CLIENTS):
        seen = got.get(i, set())
        assert len(seen) <= 1, f"{a}: IKE from 500 and 4500 went to {seen}"
        out[a] = seen.pop() if seen else "-"
    return out


def test_ike_follows_live_keyd_instances(lab: Any, keyd2: str, store: Store,
                                         clients: list[str]) -> None:
    k1 = Instance(lab, store, "keyd-1", "keyd", lab.addresses["keyd"])
    k2 = Instance(lab, store, "keyd-2", keyd2, KEYD2)
    settings = SprayerSettings(id="sprayer-k", vip=VIP, keyd=[lab.addresses["keyd"]],
                               lease_ttl_s=2, netns=lab.ns("router"))
    applier = KernelApplier(VIP, settings.keyd, netns=lab.ns("router"))
    with lab.inside(lab.ns("router")):
        sprayer = Sprayer(settings, store, applier)
    stop = threading.Event()
    sprayer.start()
    thread = threading.Thread(target=sprayer.run, args=(stop,), daemon=True)
    thread.start()
    try:
        _run(lab, store, sprayer, applier, k1, k2)
        assert thread.is_alive(), "the loop survived junk and every change"
    finally:
        stop.set()
        thread.join(5)
        sprayer.stop()
        for k in (k1, k2):
            k.die()
            k.unregister()
        KernelApplier(VIP, settings.keyd, netns=lab.ns("router")).remove()


def _run(lab: Any, store: Store, sprayer: Sprayer, applier: KernelApplier, k1: Instance,
         k2: Instance) -> None:
    both = [k1, k2]
    mark1, mark2 = applier.marks.mark(f"keyd:{k1.address}"), applier.marks.mark(f"keyd:{KEYD2}")

    # 1. nothing registered: the configured seed (keyd-1's address) takes all IKE
    k1.serve()
    k2.serve()
    wait(lambda: sprayer.leadership.is_leader and applier.nft._chain is not None,
         what="the sprayer to lead and install its chain")
    assert set(where_ike_goes(lab, both).values()) == {"keyd-1"}

    # 2. both registered: spread over both, each client always to one instance
    k1.register()
    k2.register()
    wait(lambda: set(applier.nft._chain[0]) == {mark1, mark2} if applier.nft._chain else False,
         what="the chain to hash over both instances")
    spread = where_ike_goes(lab, both)
    assert set(spread.values()) == {"keyd-1", "keyd-2"}, spread
    assert where_ike_goes(lab, both) == spread
    on2 = {p for p, k in spread.items() if k == "keyd-2"}

    # 3. keyd-2's process dies (sockets gone, lease still held): the probe takes it out
    refused = sprayer.metrics.keyd_refused._value.get()
    k2.die()
    wait(lambda: applier.nft._chain is not None and set(applier.nft._chain[0]) == {mark1},
         timeout_s=10, what="keyd-2 out by the probe")
    assert store.get(KeydRecord, "keyd-2") is not None, "the probe, not the lease, took it out"
    assert sprayer.metrics.keyd_refused._value.get() == refused + 1
    after = where_ike_goes(lab, both)
    assert set(after.values()) == {"keyd-1"}
    assert all(after[a] == "keyd-1" for a in CLIENTS if a not in on2)   # survivor kept its own

    # 4. keyd-2 restarts and registers again: back at once, with the same clients
    k2.unregister(revoke=False)
    k2.serve()
    k2.register()
    wait(lambda: applier.nft._chain is not None
         and set(applier.nft._chain[0]) == {mark1, mark2}, what="keyd-2 back in")
    assert where_ike_goes(lab, both) == spread

    # 5. keyd-1 hangs: sockets open, no keepalives: its lease ends, it is out within the TTL
    assert k1.membership is not None
    k1.membership._stop.set()      # keepalives stop; the lease runs out in etcd
    wait(lambda: store.get(KeydRecord, "keyd-1") is None, timeout_s=10,
         what="keyd-1's lease to expire")
    wait(lambda: applier.nft._chain is not None and set(applier.nft._chain[0]) == {mark2},
         timeout_s=5, what="keyd-1 out after its lease")
    assert set(where_ike_goes(lab, both).values()) == {"keyd-2"}

    # 6. junk under keyd/ is skipped; keyd-2 gone too: the seed again
    store.raw_put(store.key_of(KeydRecord("junk", "10.30.1.5", "t", 0.0)), b"{not json")
    k2.unregister()
    wait(lambda: applier.nft._chain is not None and set(applier.nft._chain[0]) == {mark1},
         timeout_s=10, what="the seed again")
    assert set(where_ike_goes(lab, both).values()) == {"keyd-1"}
