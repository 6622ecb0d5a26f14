"""The sprayer's picture of the cluster, kept from etcd watches, and what follows from it.

`ClusterView` holds nodes/, keyd/, assign/, sa/ and final seq/ records as the watches deliver
them. From it come the planner's inputs (`placements`, `new_clients`, `finals`) and the
drivers' input (`Targets`: which keyd instances take IKE, where each SPI and client virtual IP
goes right now). During a hand-off
the traffic still goes to the previous owner until the old owner's exact final counters are
all in (then the sprayer flips the map and writes `active`), or until the hand-off times out.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from cluster.plan import NodeState, NodeView, Phase, Placement
from cluster.store.records import Assignment, ChildSaRecord, KeydRecord, NodeRecord, SeqRecord
from cluster.store.watch import RecordDeleted, RecordPut, WatchEvent, WatchResynced

log = logging.getLogger("sprayer.view")


@dataclass(frozen=True, slots=True)
class Targets:
    """Where traffic goes, as the drivers need it (node ids are names, not marks)."""

    #: node id → back-end address, for every node with a lease
    nodes: dict[str, str]
    #: nodes that may take unknown SPIs (alive, ready), sorted
    fallback: list[str]
    #: spi_in → node id that receives the client's ESP now
    spis: dict[int, str]
    #: client virtual IP → node id that owns the client now
    clients: dict[str, str]
    #: node id → (capacity, draining) for drivers that balance by weight (HAProxy)
    weights: dict[str, tuple[int, bool]] = field(default_factory=dict)
    #: back-end addresses of the live keyd instances, sorted (empty: none registered; the
    #: appliers then use their configured seed list)
    keyd: list[str] = field(default_factory=list)
    #: node id → back-end IPv6 address, for the nodes that have one (clients' IPv6 virtual
    #: addresses are routed there; `clients` names them only for such nodes)
    nodes6: dict[str, str] = field(default_factory=dict)

    def client_routes(self) -> dict[str, str]:
        """Client virtual address → the back-end address of its owner, of the same family."""
        return {ip: (self.nodes6 if ":" in ip else self.nodes)[n]
                for ip, n in self.clients.items()}


@dataclass(slots=True)
class _Child:
    ike_sa_id: str
    virtual_ip: str | None
    virtual_ip6: str | None = None


@dataclass(slots=True)
class ClusterView:
    nodes: dict[str, NodeRecord] = field(default_factory=dict)
    #: keyd id → its record (present while the instance holds its lease)
    keyd: dict[str, KeydRecord] = field(default_factory=dict)
    #: ike_sa_id → (assignment, mod_revision for compare-and-swap)
    assigns: dict[str, tuple[Assignment, int]] = field(default_factory=dict)
    children: dict[int, _Child] = field(default_factory=dict)
    #: ike_sa_id → spi_in of its Child SAs (index over `children`)
    by_ike: dict[str, set[int]] = field(default_factory=dict)
    #: spi → the last final seq record seen (checkpoints are not kept; a hand-off matches
    #: a final by its epoch, so an older one is harmless)
    finals: dict[int, SeqRecord] = field(default_factory=dict)
    #: clients whose assignment is in phase `handoff`
    in_handoff: set[str] = field(default_factory=set)
    #: kinds whose initial read has completed
    synced: set[str] = field(default_factory=set)
    #: bumps on every change, so drivers re-apply only when something moved
    generation: int = 0
    on_node_gone: Callable[[str], None] | None = None

    @property
    def ready(self) -> bool:
        return {"nodes", "keyd", "assign", "sa", "seq"} <= self.synced

    def apply(self, kind: str, ev: WatchEvent) -> None:
        """Fold one watch event of record kind `kind` into the view."""
        if isinstance(ev, RecordPut) and isinstance(ev.record, SeqRecord) \
                and ev.record.kind != "final":
            # a routine checkpoint changes nothing the sprayer decides on; in particular it
            # must not hide a final just written (the new owner checkpoints at once)
            return
        self.generation += 1
        if isinstance(ev, WatchResynced):
            self.synced.add(kind)
            return
        if isinstance(ev, RecordPut):
            r = ev.record
            if isinstance(r, NodeRecord):
                self.nodes[r.id] = r
            elif isinstance(r, KeydRecord):
                self.keyd[r.id] = r
            elif isinstance(r, Assignment):
                self.set_assignment(r, ev.revision)
            elif isinstance(r, ChildSaRecord):
                old = self.children.get(r.spi_in)
                if old is not None:
                    self._unindex(r.spi_in, old.ike_sa_id)
                self.children[r.spi_in] = _Child(r.ike_sa_id, r.virtual_ip, r.virtual_ip6)
                self.by_ike.setdefault(r.ike_sa_id, set()).add(r.spi_in)
            elif isinstance(r, SeqRecord):
                self.finals[r.spi] = r
        elif isinstance(ev, RecordDeleted):
            if kind == "nodes":
                if self.nodes.pop(ev.name, None) is not None and self.on_node_gone:
                    self.on_node_gone(ev.name)
            elif kind == "keyd":
                self.keyd.pop(ev.name, None)
            elif kind == "assign":
                self.assigns.pop(ev.name, None)
                self.in_handoff.discard(ev.name)
            elif kind in ("sa", "seq"):
                try:
                    spi = int(ev.name, 16)
                except ValueError:
                    return
                if kind == "sa":
                    gone = self.children.pop(spi, None)
                    if gone is not None:
                        self._unindex(spi, gone.ike_sa_id)
                else:
                    self.finals.pop(spi, None)

    def _unindex(self, spi: int, ike_sa_id: str) -> None:
        spis = self.by_ike.get(ike_sa_id)
        if spis is not None:
            spis.discard(spi)
            if not spis:
                del self.by_ike[ike_sa_id]

    def set_assignment(self, a: Assignment, revision: int) -> None:
        """Record an assignment (revision -1: written by us, not yet seen back)."""
        self.generation += 1
        self.assigns[a.ike_sa_id] = (a, revision)
        if a.phase == "handoff":
            self.in_handoff.add(a.ike_sa_id)
        else:
            self.in_handoff.discard(a.ike_sa_id)

    # planner inputs ----------------------------------------------------------------------
    def node_views(self, alive: Callable[[str], bool],
                   draining: Callable[[str], bool]) -> list[NodeView]:
        return [NodeView(n.id, float(n.capacity),
                         NodeState.DRAINING if n.state == "draining" or draining(n.id)
                         else NodeState.READY,
                         alive=alive(n.id))
                for n in self.nodes.values()]

    def placements(self) -> dict[str, Placement]:
        return {k: Placement(a.ike_sa_id, a.node, a.epoch, Phase(a.phase), a.previous_node,
                             a.updated_at)
                for k, (a, _) in self.assigns.items()}

    def new_clients(self) -> set[str]:
        return self.by_ike.keys() - self.assigns.keys()

    def handoffs_with_finals(self) -> set[str]:
        """Clients in hand-off whose old owner wrote final counters for every Child SA."""
        done = set()
        for k in self.in_handoff:
            a = self.assigns[k][0]
            if all((f := self.finals.get(s)) is not None and f.epoch == a.epoch
                   and f.owner == a.previous_node for s in self.by_ike.get(k, ())):
                done.add(k)
        return done

    # driver input ------------------------------------------------------------------------
    def keyd_addresses(self, out: frozenset[str] = frozenset()) -> list[str]:
        """Back-end addresses of the registered keyd instances not in `out`, sorted (IPv4
        only, like everything the drivers steer)."""
        return sorted({r.address for r in self.keyd.values()
                       if r.id not in out and _ipv4(r.address, f"keyd {r.id}")})

    def targets(self, alive: Callable[[str], bool],
                keyd_out: frozenset[str] = frozenset()) -> Targets:
        # a hand-off whose exact final counters are all in has flipped, even before the
        # sprayer's `active` write lands: the new owner is taking over from those counters
        flipped = self.handoffs_with_finals() if self.in_handoff else set()

        def receiver(a: Assignment) -> str:
            if a.phase == "handoff" and a.previous_node and a.ike_sa_id not in flipped:
                return a.previous_node
            return a.node

        # the drivers steer IPv4 only: a node or client with another address is left out
        # (and logged once) rather than failing every batch it would be part of
        nodes = {n.id: n for n in self.nodes.values() if _ipv4(n.address, f"node {n.id}")}
        nodes6 = {n.id: n.address6 for n in nodes.values() if n.address6}
        owner = {k: receiver(a) for k, (a, _) in self.assigns.items()}
        spis: dict[int, str] = {}
        clients: dict[str, str] = {}
        for spi, c in self.children.items():
            node = owner.get(c.ike_sa_id)
            if node is None or node not in nodes:
                continue
            spis[spi] = node
            if c.virtual_ip and _ipv4(c.virtual_ip, f"client {c.ike_sa_id}"):
                clients[c.virtual_ip] = node
            # inner IPv6 comes back through a node's IPv6 back-end address (the outer
            # traffic the drivers steer stays IPv4)
            if c.virtual_ip6 and node in nodes6:
                clients[c.virtual_ip6] = node
        fallback = sorted(n.id for n in nodes.values()
                          if n.state == "ready" and n.capacity > 0 and alive(n.id))
        return Targets(
            nodes={n.id: n.address for n in nodes.values()},
            fallback=fallback, spis=spis, clients=clients,
            weights={n.id: (n.capacity, n.state == "draining") for n in nodes.values()},
            keyd=self.keyd_addresses(keyd_out), nodes6=nodes6)


_warned: set[str] = set()


def _ipv4(address: str, what: str) -> bool:
    try:
        ipaddress.IPv4Address(address)
        return True
    except ValueError:
        if what not in _warned:
            _warned.add(what)
            log.warning("not steered: %s has a non-IPv4 address %s", what, address)
        return False
