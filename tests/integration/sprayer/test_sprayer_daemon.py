"""The sprayer daemon end to end on a real etcd, in the driver lab's namespaces.

Nodes are represented by what the sprayer sees of them: their nodes/ records held on real
leases, and real health responders (cluster.probe.HealthResponder, the node side of the
probe) bound to their back-end addresses inside their namespaces. Clients are Child SA
records in sa/. The sprayer runs with the nftables driver in the router namespace.
"""

from __future__ import annotations

import struct
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cluster.host import DriverError
from cluster.probe import HealthResponder
from cluster.store.client import Guard, Store
from cluster.store.membership import Membership
from cluster.store.records import Assignment, ChildSaRecord, NodeRecord, SeqRecord
from sprayer.apply import KernelApplier
from sprayer.daemon import Sprayer
from sprayer.leader import Leadership
from sprayer.settings import SprayerSettings

VIP = "203.0.113.10"
HEALTH_PORT = 4501


def wait(pred: Callable[[], bool], timeout_s: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def child(i: int) -> ChildSaRecord:
    vip = f"10.99.{(i + 1) >> 8 & 255}.{(i + 1) & 255}"
    return ChildSaRecord(
        spi_in=0x5000_0000 + i, spi_out=0x6000_0000 + i, ike_sa_id=f"{i + 1:016x}{i + 7:016x}",
        encr="aes128gcm16", integ=None, esn=True, enc_key_in=bytes(20), integ_key_in=b"",
        enc_key_out=bytes(20), integ_key_out=b"", ts_local=["10.20.0.0/16"],
        ts_remote=[f"{vip}/32"], peer_addr="198.51.100.2", peer_port=4500,
        udp_encap=True, virtual_ip=vip, identity=f"client-{i}",
        created_at=time.time(), soft_lifetime_s=3000, hard_lifetime_s=3600)


@dataclass
class Node:
    lab: Any
    store: Store
    id: str
    responder: HealthResponder | None = None
    membership: Membership | None = None
    state: list[str] = field(default_factory=lambda: ["ready"])

    def record(self) -> NodeRecord:
        return NodeRecord(self.id, self.lab.addresses[self.id], 100, self.state[0],  # type: ignore[arg-type]
                          HEALTH_PORT, "test", time.time())

    def join(self) -> None:
        self.membership = Membership(self.store, self.record(), 2, lambda ev: None)
        self.membership.start()
        self.answer()

    def answer(self) -> None:
        sock = self.lab.udp(self.id, HEALTH_PORT, addr=self.lab.addresses[self.id])
        self.responder = HealthResponder(sock, self.id)
        self.responder.start()

    def silence(self) -> None:
        assert self.responder is not None
        self.responder.stop()
        self.responder.sock.close()

    def leave(self) -> None:
        if self.membership is not None:
            self.membership.stop(revoke=True)
            self.membership = None


class Running:
    def __init__(self, sprayer: Sprayer) -> None:
        self.sprayer = sprayer
        self.stop = threading.Event()
        sprayer.start()
        self.thread = threading.Thread(target=sprayer.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def crash(self) -> None:
        """Stop the loop and the watches without resigning: the lease must run out."""
        self.stop.set()
        self.thread.join(5)
        for w in self.sprayer._watchers:
            w.stop()


def make_sprayer(lab: Any, store: Store, sid: str, handoff_timeout_ms: int) -> Sprayer:
    settings = SprayerSettings(id=sid, vip=VIP, keyd=[lab.addresses["keyd"]], lease_ttl_s=2,
                               handoff_timeout_ms=handoff_timeout_ms,
                               rebalance_moves_per_s=1000, netns=lab.ns("router"))
    applier = KernelApplier(VIP, settings.keyd, netns=lab.ns("router"))
    with lab.inside(lab.ns("router")):     # the probe socket lives on the router
        return Sprayer(settings, store, applier)


def assigns(store: Store) -> dict[str, Assignment]:
    return {v.record.ike_sa_id: v.record for v in store.list(Assignment).items}


def test_assign_failover_handoff_and_leader_takeover(lab: Any, store: Store) -> None:
    nodes = {n: Node(lab, store, n) for n in ("node-1", "node-2")}
    for n in nodes.values():
        n.join()
    clients = [child(i) for i in range(24)]
    store.put_many(clients)
    spi_of = {c.ike_sa_id: c.spi_in for c in clients}

    a = Running(make_sprayer(lab, store, "sprayer-a", handoff_timeout_ms=4000))
    b = Running(make_sprayer(lab, store, "sprayer-b", handoff_timeout_ms=4000))
    try:
        _run(lab, store, nodes, clients, spi_of, a, b)
    finally:
        for r in (a, b):
            r.crash()
            r.sprayer.prober.close()
        for n in nodes.values():
            if n.responder:
                n.responder.stop()
            n.leave()
        KernelApplier(VIP, [lab.addresses["keyd"]], netns=lab.ns("router")).remove()


def _run(lab: Any, store: Store, nodes: dict[str, Node], clients: list[ChildSaRecord],
         spi_of: dict[str, int], a: Running, b: Running) -> None:
    wait(lambda: a.sprayer.leadership.is_leader or b.sprayer.leadership.is_leader,
         what="a leader")
    leader, standby = (a, b) if a.sprayer.leadership.is_leader else (b, a)
    applier = leader.sprayer.applier
    assert isinstance(applier, KernelApplier)
    mark = applier.marks.mark

    # 1. new clients get owners; both nodes get some; the kernel map follows
    wait(lambda: len(assigns(store)) == len(clients), what="initial assignments")
    first = assigns(store)
    assert {x.node for x in first.values()} == {"node-1", "node-2"}
    assert all(x.epoch == 1 and x.phase == "active" for x in first.values())

    def map_matches() -> bool:
        want = {spi_of[k]: mark(x.previous_node if x.phase == "handoff" and x.previous_node
                                else x.node) for k, x in assigns(store).items()}
        try:
            return applier.nft.read_spis() == want
        except DriverError:  # the table is not there yet
            return False
    wait(map_matches, what="the SPI map to follow assign/")
    on1 = sorted(k for k, x in first.items() if x.node == "node-1")
    send = lab.udp("sender", 0, addr="0.0.0.0")
    natt = {n: lab.udp(n, 4500) for n in ("node-1", "node-2")}
    esp = struct.pack("!II", spi_of[on1[0]], 9) + b"z" * 32
    send.sendto(esp, (VIP, 4500))
    assert lab.receive_any(natt) == {"node-1": esp}

    # 2. node-1 stops answering probes: only its clients move, unplanned, epoch 2
    nodes["node-1"].silence()
    wait(lambda: all(assigns(store)[k].node == "node-2" for k in on1), what="failover")
    after = assigns(store)
    for k, x in after.items():
        if k in on1:
            assert (x.epoch, x.phase, x.previous_node) == (2, "active", "node-1")
        else:
            assert x == first[k]
    wait(map_matches, what="map after failover")
    send.sendto(esp, (VIP, 4500))
    assert lab.receive_any(natt) == {"node-2": esp}

    # 3. node-1 answers again: after damping, rebalance hands its clients back (planned)
    nodes["node-1"].answer()
    wait(lambda: any(x.phase == "handoff" for x in assigns(store).values()), what="hand-off")
    moving = {k: x for k, x in assigns(store).items() if x.phase == "handoff"}
    assert all(x.node == "node-1" and x.previous_node == "node-2" for x in moving.values())
    # traffic keeps going to the old owner until the flip
    kernel = applier.nft.read_spis()
    assert all(kernel[spi_of[k]] == mark("node-2") for k in moving
               if assigns(store)[k].phase == "handoff")
    # the old owner writes exact final counters for one client: it completes at once
    k0, x0 = next(iter(moving.items()))
    store.put(SeqRecord(spi_of[k0], "node-2", x0.epoch, 100, 99, 0, "final", time.time()))
    wait(lambda: assigns(store)[k0].phase == "active", timeout_s=3.0,
         what="exact hand-off completion")
    # the rest complete on the timeout (unplanned fallback); all back where rendezvous says
    wait(lambda: all(x.phase == "active" for x in assigns(store).values())
         and {k for k, x in assigns(store).items() if x.node == "node-1"} == set(on1),
         what="rebalance back to node-1")
    wait(map_matches, what="map after hand-off")

    # 4. the leader crashes; the standby takes over within the lease TTL and keeps going
    leader.crash()
    wait(lambda: standby.sprayer.leadership.is_leader, timeout_s=10.0, what="takeover")
    nodes["node-2"].leave()   # lease loss: immediate
    wait(lambda: all(x.node == "node-1" for x in assigns(store).values()), what="failover 2")
    applier2 = standby.sprayer.applier
    assert isinstance(applier2, KernelApplier)
    wait(lambda: set(applier2.nft.read_spis().values()) == {applier2.marks.mark("node-1")},
         what="map after takeover")
    for s in (send, *natt.values()):
        s.close()


def test_a_deposed_leader_cannot_write_assignments(store: Store) -> None:
    a, b = Leadership(store, "sprayer-a", 2), Leadership(store, "sprayer-b", 2)
    assert a.step() and not b.step()
    assert a.holder() == "sprayer-a"
    stale_guard = a.guard
    store.revoke_lease(a.lease_id)          # as if a had been partitioned past its TTL
    wait(lambda: b.step(), timeout_s=10.0, what="b to take over")
    assert b.holder() == "sprayer-b"
    record = Assignment("00000000000000aa00000000000000bb", "node-1", 1, "active", None, 0.0)
    key = store.key_of(record)
    assert not store.commit([record], guards=[Guard(key, 0), stale_guard])
    assert store.commit([record], guards=[Guard(key, 0), b.guard])
    assert not a.step()                      # a learns it lost the lease
    assert not a.is_leader
    b.resign()
    assert store.raw_get(b.key) is None      # a clean stop frees the key at once


def test_the_leader_repairs_a_kernel_map_that_differs_from_its_plan(lab: Any,
                                                                    store: Store) -> None:
    """The SPI map edited behind the sprayer's back (an element gone, one changed, one made
    up) is found by the leader's read-back, logged, counted and rewritten whole."""
    node = Node(lab, store, "node-1")
    node.join()
    clients = [child(i) for i in range(8)]
    store.put_many(clients)
    sprayer = make_sprayer(lab, store, "sprayer-a", handoff_timeout_ms=1000)
    sprayer.map_checker.interval_s = 0.3
    running = Running(sprayer)
    applier = sprayer.applier
    assert isinstance(applier, KernelApplier)
    try:
        want = {c.spi_in: applier.marks.mark("node-1") for c in clients}

        def held() -> dict[int, int]:
            try:
                return applier.nft.read_spis()
            except DriverError:
                return {}
        wait(lambda: held() == want, what="the SPI map")
        repairs = sprayer.metrics.map_repairs
        assert repairs._value.get() == 0
        t = "inet ipsec_cluster spi_mark"
        first, second = clients[0].spi_in, clients[1].spi_in
        subprocess.run(["ip", "netns", "exec", lab.ns("router"), "nft", "-f", "-"], check=True,
                       text=True, input=f"delete element {t} {{ {first}, {second} }}\n"
                       f"add element {t} {{ {second} : 0x7777, 12345 : 0x7777 }}\n")
        assert held() != want
        wait(lambda: repairs._value.get() >= 1 and held() == want, timeout_s=10,
             what="the repair")
        diffs = sprayer.metrics.map_differences
        assert [diffs.labels(k)._value.get() for k in ("missing", "wrong", "extra")] == [1, 1, 1]
    finally:
        running.crash()
        sprayer.prober.close()
        if node.responder:
            node.responder.stop()
        node.leave()
        KernelApplier(VIP, [lab.addresses["keyd"]], netns=lab.ns("router")).remove()
