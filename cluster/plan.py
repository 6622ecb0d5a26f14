"""The pure planner: which node owns which client, and which clients must move.

No sockets, no etcd, no clock: the daemon passes in what it read (nodes, assignments, final
sequence records) and the time `now`, and gets back a list of actions to write to `assign/`.

Placement is weighted rendezvous hashing (`cluster/rendezvous.py`) of the client's IKE SA id
over the candidate nodes: each node gets a share of clients proportional to its weight, and
when a node leaves only its own clients move (every other client's best node is unchanged);
when a node joins only the clients it now wins move to it.

Moves come in two kinds (DESIGN.md, "Moving a client without rekeying"):
- unplanned (`Failover`): the owner is dead; the new owner starts from checkpoint + jump.
  Never rate-limited: those clients are cut off until they move.
- planned (`StartHandoff` for drain and rebalance): the old owner writes exact counters, the
  new owner installs them, then `CompleteHandoff` flips the map. Rate-limited by a token
  bucket (moves per second) so no node is flooded; drain goes before rebalance.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass

from cluster import rendezvous


class PlanUsageError(Exception):
    """The caller misused the planner API (bad weights, bad rate)."""


class NodeState(enum.Enum):
    READY = "ready"
    DRAINING = "draining"


class Phase(enum.Enum):
    ACTIVE = "active"
    HANDOFF = "handoff"


class MoveReason(enum.Enum):
    FAILOVER = "failover"
    DRAIN = "drain"
    REBALANCE = "rebalance"


@dataclass(frozen=True, slots=True)
class NodeView:
    """What the planner knows about one node."""

    id: str
    #: relative share of clients (the node's `capacity`); 0 means "take no new clients"
    weight: float
    #: ready, or draining (keeps clients only until they are moved off)
    state: NodeState = NodeState.READY
    #: health verdict (probes + lease, after damping); a dead node's clients fail over
    alive: bool = True


@dataclass(frozen=True, slots=True)
class Placement:
    """The current assignment of one client (an IKE SA), as read from `assign/`."""

    ike_sa_id: str
    #: the owning node (during a hand-off: the node the client moves to)
    node: str
    #: fencing token, grows by one on every change of owner
    epoch: int
    phase: Phase = Phase.ACTIVE
    #: during a hand-off: the node the client moves away from
    previous_node: str | None = None
    #: time (same clock as `now`) the assignment was last written
    updated_at: float = 0.0


class PlanAction:
    """Marker base class of everything the planner asks the daemon to write."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Assign(PlanAction):
    """A client without an assignment gets its first owner."""

    ike_sa_id: str
    node: str
    epoch: int


@dataclass(frozen=True, slots=True)
class Failover(PlanAction):
    """Unplanned move: `from_node` is dead; `to_node` takes over at checkpoint + jump."""

    ike_sa_id: str
    from_node: str
    to_node: str
    epoch: int


@dataclass(frozen=True, slots=True)
class StartHandoff(PlanAction):
    """Planned move: write phase `handoff`; the old owner must write its exact counters."""

    ike_sa_id: str
    from_node: str
    to_node: str
    epoch: int
    reason: MoveReason


@dataclass(frozen=True, slots=True)
class CompleteHandoff(PlanAction):
    """Flip the map to `node`; `exact` tells whether final counters arrived in time."""

    ike_sa_id: str
    node: str
    epoch: int
    exact: bool


# -- rendezvous hashing ------------------------------------------------------------------------

#: keeps the planner's draws apart from other uses of the hash
RENDEZVOUS_PERSON = b"ipsc-rdv"


def score(node: NodeView, key: str) -> float:
    """Weighted rendezvous score of `node` for client `key` (higher wins)."""
    return rendezvous.score(node.id, node.weight, key, RENDEZVOUS_PERSON)


def candidates(nodes: Iterable[NodeView]) -> list[NodeView]:
    """Nodes that may receive clients: alive, ready and with a positive weight."""
    return sorted(
        (n for n in nodes if n.alive and n.state is NodeState.READY and n.weight > 0),
        key=lambda n: n.id,
    )


def choose(key: str, nodes: Iterable[NodeView]) -> str | None:
    """The node that owns `key` among `nodes` (all taken as candidates), or None if empty."""
    return rendezvous.highest(key, ((n.id, n.weight) for n in nodes), RENDEZVOUS_PERSON)


# -- planner -----------------------------------------------------------------------------------


class Planner:
    """Turns the cluster's state into assignment actions; holds only the move budget.

    `moves_per_s` limits planned moves (drain, rebalance); `burst` is how many may start at
    once (default: one second's worth). `handoff_timeout_s` is how long a hand-off waits for
    the old owner's final counters before it completes on the unplanned path.
    """

    def __init__(self, moves_per_s: float, handoff_timeout_s: float,
                 burst: float | None = None) -> None:
        if moves_per_s <= 0 or handoff_timeout_s <= 0:
            raise PlanUsageError("moves_per_s and handoff_timeout_s must be positive")
        self.moves_per_s = float(moves_per_s)
        self.handoff_timeout_s = float(handoff_timeout_s)
        self.burst = float(burst if burst is not None else max(1.0, moves_per_s))
        self._tokens = self.burst
        self._tokens_at: float | None = None
        # desired owner per client, valid for one candidate set (rebalance scans are costly)
        self._desired_for: tuple[tuple[str, float], ...] | None = None
        self._desired: dict[str, str | None] = {}
        self._backlog = False

    # token bucket ------------------------------------------------------------------------
    def _refill(self, now: float) -> None:
        if self._tokens_at is not None and now > self._tokens_at:
            self._tokens = min(self.burst,
                               self._tokens + (now - self._tokens_at) * self.moves_per_s)
        if self._tokens_at is None or now > self._tokens_at:
            self._tokens_at = now

    def _take(self) -> bool:
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def _desired_table(self, cands: list[NodeView]) -> dict[str, str | None]:
        """The cache of rendezvous choices, valid for exactly this candidate set."""
        sig = tuple((n.id, n.weight) for n in cands)
        if sig != self._desired_for:
            self._desired_for = sig
            self._desired = {}
        return self._desired

    @property
    def backlog(self) -> bool:
        """Planned moves were left for later ticks because the move budget ran out."""
        return self._backlog

    # the plan ----------------------------------------------------------------------------
    def plan(self, nodes: Iterable[NodeView], placements: Mapping[str, Placement],
             new_clients: Iterable[str], now: float, *, finals: Set[str] = frozenset(),
             rebalance: bool = True) -> list[PlanAction]:
        """Actions for this tick, in the order they should be written.

        `placements` maps ike_sa_id to its current assignment; `new_clients` are IKE SAs with
        no assignment yet; `finals` holds the ike_sa_ids whose old owner has written final
        counters for the current hand-off epoch. `rebalance` allows planned moves of clients
        that sit on a live ready node other than their rendezvous choice.
        """
        self._refill(now)
        by_id = {n.id: n for n in nodes}
        cands = candidates(by_id.values())
        actions: list[PlanAction] = []
        table = self._desired_table(cands)
        if len(table) > 2 * len(placements) + 1024:
            table.clear()   # clients that left: do not keep their choices forever

        def desired(key: str) -> str | None:
            owner = table.get(key, "")
            if owner == "":
                owner = table[key] = choose(key, cands)
            return owner

        def alive(node_id: str | None) -> bool:
            n = by_id.get(node_id) if node_id is not None else None
            return n is not None and n.alive

        for key in sorted(set(new_clients) - placements.keys()):
            owner = desired(key)
            if owner is not None:
                actions.append(Assign(key, owner, 1))

        draining: list[Placement] = []
        misplaced: list[Placement] = []
        for key in sorted(placements):
            p = placements[key]
            target = desired(key)
            if p.phase is Phase.HANDOFF:
                if not alive(p.node):
                    if target is not None:
                        actions.append(Failover(key, p.node, target, p.epoch + 1))
                elif key in finals:
                    actions.append(CompleteHandoff(key, p.node, p.epoch, exact=True))
                elif not alive(p.previous_node) or now - p.updated_at >= self.handoff_timeout_s:
                    actions.append(CompleteHandoff(key, p.node, p.epoch, exact=False))
                continue
            if not alive(p.node):
                if target is not None:
                    actions.append(Failover(key, p.node, target, p.epoch + 1))
                continue
            if target is None or target == p.node:
                continue
            if by_id[p.node].state is NodeState.DRAINING or by_id[p.node].weight <= 0:
                draining.append(p)
            elif rebalance:
                misplaced.append(p)

        self._backlog = False
        for reason, group in ((MoveReason.DRAIN, draining), (MoveReason.REBALANCE, misplaced)):
            for p in group:
                if not self._take():
                    self._backlog = True
                    return actions
                target = desired(p.ike_sa_id)
                assert target is not None
                actions.append(StartHandoff(p.ike_sa_id, p.node, target, p.epoch + 1, reason))
        return actions


def spread(placements: Iterable[Placement]) -> dict[str, int]:
    """How many clients each node owns (for status output and tests)."""
    counts: dict[str, int] = {}
    for p in placements:
        counts[p.node] = counts.get(p.node, 0) + 1
    return counts
