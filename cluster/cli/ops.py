"""What the operator commands change in the keyspace: drain, undrain, remove, rebalance,
redirect.

Every write is a compare-and-swap on the record's mod_revision, so a command never overwrites
a change it did not see (a node re-registering, the sprayer moving a client).

Drain and undrain rewrite `nodes/<id>` with the new `state`, on the record's own lease (the
node's): the node keeps holding the record and the state it now carries. The node agent's
side of that contract: it never writes `state` back on its own — before any rewrite of its
record it reads the current one and keeps its `state` (CAS on mod_revision), and it watches
its record to learn that it was drained. A drain lasts as long as the node's lease; a node
that restarts registers afresh (as `ready`, or `draining` if started that way).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Literal

from cluster.cli.context import CliFailure
from cluster.cli.view import Snapshot
from cluster.plan import NodeState, NodeView, Phase, Placement, Planner, StartHandoff
from cluster.store.client import Store
from cluster.store.errors import StoreError
from cluster.store.records import (
    Assignment,
    MalformedRecord,
    NodeRecord,
    RedirectRequest,
    gateway_ok,
)

CAS_ATTEMPTS = 5


def set_node_state(store: Store, node_id: str, state: Literal["ready", "draining"]
                   ) -> tuple[NodeRecord, bool]:
    """Set a node's state; (record, whether it changed). CliFailure if it is not registered."""
    for _ in range(CAS_ATTEMPTS):
        current = store.get(NodeRecord, node_id)
        if current is None:
            raise CliFailure(f"no node {node_id!r} is registered")
        if current.record.state == state:
            return current.record, False
        updated = dataclasses.replace(current.record, state=state)
        if store.update_if(updated, current.mod_revision, lease=current.lease_id or None):
            return updated, True
    raise CliFailure(f"node {node_id!r} changed {CAS_ATTEMPTS} times while writing; try again")


def remove_node(store: Store, snap: Snapshot, node_id: str, force: bool) -> str | None:
    """Delete `nodes/<id>`. Refused while the node still owns clients, unless forced. A
    record that does not decode is removed too (every reader skips it; this is how an
    operator clears it): the reason it was malformed is returned, else None."""
    malformed: str | None = None
    try:
        current = store.get(NodeRecord, node_id)
        revision = None if current is None else current.mod_revision
    except MalformedRecord as exc:
        malformed = exc.reason
        raw = store.raw_get_revision(store.keyspace.node(node_id))
        revision = None if raw is None else raw[1]
    if revision is None:
        raise CliFailure(f"no node {node_id!r} is registered")
    owned = sum(1 for v in snap.assign if v.record.node == node_id)
    if owned and not force:
        raise CliFailure(f"node {node_id!r} still owns {owned} client(s): "
                         f"`clusterctl node drain {node_id}` first, or --force")
    if not store.delete_if(NodeRecord, node_id, revision):
        raise CliFailure(f"node {node_id!r} changed while removing it; try again")
    return malformed


@dataclass(frozen=True, slots=True)
class Move:
    """One planned hand-off and what became of it."""

    ike_sa_id: str
    identity: str | None
    from_node: str
    to_node: str
    epoch: int
    reason: str
    result: str
    """planned (dry run), written, conflict (the assignment changed meanwhile), or — when
    etcd failed part way — unknown (the write that failed) and not written (those after)."""

    def to_json(self) -> dict[str, Any]:
        return {"ike_sa_id": self.ike_sa_id, "identity": self.identity,
                "from": self.from_node, "to": self.to_node, "epoch": self.epoch,
                "reason": self.reason, "result": self.result}


def plan_moves(snap: Snapshot, now: float, limit: int | None = None) -> list[StartHandoff]:
    """Planned moves only (drain first, then rebalance), from the sprayer's own planner.
    First assignments, fail-overs and hand-off completion stay the sprayer daemon's job."""
    nodes = [NodeView(v.record.id, float(v.record.capacity), NodeState(v.record.state))
             for v in snap.nodes]
    placements = {
        v.record.ike_sa_id: Placement(v.record.ike_sa_id, v.record.node, v.record.epoch,
                                      Phase(v.record.phase), v.record.previous_node,
                                      v.record.updated_at)
        for v in snap.assign}
    budget = float(len(placements) + 1)
    planner = Planner(moves_per_s=budget, handoff_timeout_s=1e9, burst=budget)
    actions = planner.plan(nodes, placements, (), now, rebalance=True)
    moves = [a for a in actions if isinstance(a, StartHandoff)]
    return moves if limit is None else moves[:limit]


class RebalanceInterrupted(CliFailure):
    """etcd failed part way: `moves` says which hand-offs were written before it did."""

    def __init__(self, moves: list[Move], cause: StoreError) -> None:
        written = sum(1 for m in moves if m.result == "written")
        super().__init__(f"{cause}; stopped after {written} of {len(moves)} hand-off(s) "
                         "were written (they complete on their own): run again when etcd is "
                         "back")
        self.moves = moves


def rebalance(store: Store, snap: Snapshot, dry_run: bool, limit: int | None = None,
              now: float | None = None) -> list[Move]:
    """Start the hand-offs the planner asks for: each assignment becomes phase `handoff`
    with epoch + 1 and previous_node = the old owner, by CAS (DESIGN.md, planned moves).
    RebalanceInterrupted if etcd fails part way (the moves say what was written)."""
    now = time.time() if now is None else now
    identities = {v.record.ike_sa_id: v.record.identity for v in snap.ike}
    revisions = {v.record.ike_sa_id: v for v in snap.assign}
    moves = []
    failure: StoreError | None = None
    for action in plan_moves(snap, now, limit):
        result = "planned"
        if not dry_run and failure is not None:
            result = "not written"
        elif not dry_run:
            current = revisions[action.ike_sa_id]
            handoff = Assignment(action.ike_sa_id, action.to_node, action.epoch, "handoff",
                                 action.from_node, now)
            try:
                ok = store.update_if(handoff, current.mod_revision)
            except StoreError as exc:
                # Unknown whether this one landed: a CAS on the old revision is safe to
                # repeat, and the next run plans from what etcd then holds.
                failure, result = exc, "unknown"
            else:
                result = "written" if ok else "conflict"
        moves.append(Move(action.ike_sa_id, identities.get(action.ike_sa_id),
                          action.from_node, action.to_node, action.epoch,
                          action.reason.value, result))
    if failure is not None:
        raise RebalanceInterrupted(moves, failure)
    return moves


def request_redirects(store: Store, snap: Snapshot, gateway: str, ike_sa_ids: list[str],
                      identity: str | None, everyone: bool) -> list[dict[str, str]]:
    """Ask established clients to move to `gateway` (RFC 5685 §5): a redirect/<ike-sa-id>
    request per client named — by IKE SA id, by identity, or all of them; the keyd
    instance that holds each client sends the REDIRECT (keyd/redirects.py). Clients that
    never announced redirect support are left alone by keyd (and say so in its log)."""
    if not gateway_ok(gateway):
        raise CliFailure(f"not a gateway address or DNS name: {gateway!r}")
    held = {v.record.ike_sa_id: v.record for v in snap.ike}
    if everyone:
        chosen = sorted(held)
    elif identity is not None:
        chosen = sorted(i for i, r in held.items() if r.identity == identity)
        if not chosen:
            raise CliFailure(f"no client with identity {identity!r} is connected")
    else:
        missing = [i for i in ike_sa_ids if i not in held]
        if missing:
            raise CliFailure(f"no such client (IKE SA): {', '.join(missing)}")
        chosen = list(dict.fromkeys(ike_sa_ids))
    now = time.time()
    try:
        for ike_sa_id in chosen:
            store.put(RedirectRequest(ike_sa_id=ike_sa_id, gateway=gateway, requested_at=now))
    except StoreError as exc:
        raise CliFailure(f"redirect not requested: {exc}") from None
    return [{"ike_sa_id": i, "identity": held[i].identity, "gateway": gateway}
            for i in chosen]
