"""What the node's ownership core (cluster.node.ownership) is told and what it answers.

`NodeEvent`s go in: what etcd's watches said (assignments, SAs, nodes), what the shell's etcd
reads and writes came back with (seq records, a final record written), a new owner's READY,
the lease. `NodeAction`s come out, in the order the shell must carry them out: data-plane
actions (every data plane implements them: cluster.node.plane.DataPlane), client routes,
etcd reads and writes of seq/ records, READY datagrams.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from cluster.esp import SaCounters
from cluster.node.counters import TakeOver, Traffic
from cluster.node.handoff import Ready
from cluster.store import Assignment, ChildSaRecord, SeqRecord

Addresses = frozenset[bytes]  # client keys (cluster.node.outbound): hosts or subnets
#: a take-over's read of seq/ records: client, the assignment it is for, spi -> record
SeqRead = tuple[str, Assignment, dict[int, SeqRecord | None]]


class NodeEvent:
    """Marker base of the ownership core's inputs."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class AssignmentPut(NodeEvent):
    assignment: Assignment
    revision: int  # the mod_revision of assign/<ike-sa-id>: what writes are guarded by


@dataclass(frozen=True, slots=True)
class AssignmentDeleted(NodeEvent):
    ike_sa_id: str


@dataclass(frozen=True, slots=True)
class SaPut(NodeEvent):
    """A Child SA record the data plane now holds (new, or an update of one it held)."""

    record: ChildSaRecord


@dataclass(frozen=True, slots=True)
class SaDeleted(NodeEvent):
    spi: int


@dataclass(frozen=True, slots=True)
class NodeSeen(NodeEvent):
    node_id: str
    address: str  # back-end address: where a handed-off client is forwarded
    health_port: int  # where a hand-off's new owner sends READY
    address6: str | None = None  # back-end IPv6 address: where its IPv6 clients go


@dataclass(frozen=True, slots=True)
class NodeGone(NodeEvent):
    node_id: str


@dataclass(frozen=True, slots=True)
class SeqsRead(NodeEvent):
    """The seq records a `ReadSeqs` asked for (absent or unreadable: None)."""

    items: tuple[SeqRead, ...]


@dataclass(frozen=True, slots=True)
class CountersInstalled(NodeEvent):
    """The data plane installed the counters of an `InstallCounters`: where each SA starts
    (the take-over's counters merged with what it had: `counters.merge_window`)."""

    request: InstallCounters
    started: dict[int, SaCounters]


@dataclass(frozen=True, slots=True)
class FinalWritten(NodeEvent):
    """A `WriteFinal` is done: written (`ok`), or refused by its guard or etcd."""

    request: WriteFinal
    ok: bool


@dataclass(frozen=True, slots=True)
class ReadyReceived(NodeEvent):
    ready: Ready


@dataclass(frozen=True, slots=True)
class RoutesInPlace(NodeEvent):
    """Every route change decided before an `AnnounceWhenRouted` is applied."""

    ike_sa_id: str


@dataclass(frozen=True, slots=True)
class Rerouted(NodeEvent):
    """A `via` route is applied and what was held for the address re-injected."""

    address: bytes


@dataclass(frozen=True, slots=True)
class LeaseLapsed(NodeEvent):
    """The lease is gone (`expired`: etcd said so) or unconfirmed (etcd is silent)."""

    expired: bool


@dataclass(frozen=True, slots=True)
class Rejoined(NodeEvent):
    """Registered again after a lease lapsed: the assignments as etcd lists them now."""

    assignments: tuple[tuple[Assignment, int], ...]


class NodeAction:
    """Marker base of the ownership core's outputs."""

    __slots__ = ()


# -- data-plane actions (cluster.node.plane.DataPlane) -------------------------------------
@dataclass(frozen=True, slots=True)
class Hold(NodeAction):
    """Keep outbound packets to these addresses (no SA sends for them yet) for `for_s`."""

    addresses: Addresses
    for_s: float


@dataclass(frozen=True, slots=True)
class Release(NodeAction):
    """Stop holding for these addresses; what was held is dropped (`not_owner`)."""

    addresses: Addresses


@dataclass(frozen=True, slots=True)
class Reinject(NodeAction):
    """Give what is held for these addresses back to the kernel (routed elsewhere now)."""

    addresses: Addresses


@dataclass(frozen=True, slots=True)
class StopSending(NodeAction):
    spis: frozenset[int]


@dataclass(frozen=True, slots=True)
class SaStart:
    """Where a take-over starts one SA: its counters and the traffic it carried before."""

    take_over: TakeOver
    carried: Traffic


@dataclass(frozen=True, slots=True)
class InstallCounters(NodeAction):
    """Install these starts (answered by `CountersInstalled`); `clients` says whose SAs they
    are (client, epoch, its SAs) and `persisted` the record each start came from."""

    starts: dict[int, SaStart]
    clients: tuple[tuple[str, int, tuple[int, ...]], ...]
    persisted: dict[int, SaCounters | None]


@dataclass(frozen=True, slots=True)
class SendOn(NodeAction):
    """Send on these SAs, each below its send limit, and flush what was held for them."""

    limits: dict[int, int]


@dataclass(frozen=True, slots=True)
class FenceAll(NodeAction):
    """Stop sending on every SA (the lease expired)."""


@dataclass(frozen=True, slots=True)
class Detach(NodeAction):
    """While `detached`, send only to clients heard from lately (docs/node.md, "Fencing")."""

    detached: bool


@dataclass(frozen=True, slots=True)
class SendReady(NodeAction):
    """A READY datagram, sent once the data-plane actions before it are in effect."""

    message: bytes
    target: tuple[str, int]


# -- routes, etcd ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Route(NodeAction):
    """`tun`: route the address to the TUN, `del`: remove that, `via`: route it to another
    node, `unvia`: remove that (cluster.node.tun.RouteChange)."""

    action: Literal["tun", "del", "via", "unvia"]
    address: bytes
    via: str = ""


@dataclass(frozen=True, slots=True)
class AnnounceWhenRouted(NodeAction):
    """Answer `RoutesInPlace` once the route changes before this one are applied."""

    ike_sa_id: str


@dataclass(frozen=True, slots=True)
class ReadSeqs(NodeAction):
    """Read seq/<spi> of these SAs (answered by `SeqsRead`); with `wait_final_s`, keep
    reading that long until every one is the old owner's final record for `assignment`."""

    ike_sa_id: str
    assignment: Assignment
    spis: frozenset[int]
    wait_final_s: float = 0.0


@dataclass(frozen=True, slots=True)
class WriteFinal(NodeAction):
    """Write these SAs' exact counters as `final` records under `assignment` (guarded by
    its `revision`); answered by `FinalWritten`. `kept`: addresses still routed to our TUN,
    to be forwarded `to` the new owner's back-end address once written."""

    ike_sa_id: str
    assignment: Assignment
    revision: int
    spis: frozenset[int]
    kept: Addresses = field(default_factory=frozenset)
    to: str | None = None
