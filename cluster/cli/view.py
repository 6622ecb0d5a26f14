"""The cluster as an operator sees it: one read of the keyspace, joined into rows.

`read_snapshot()` is the only function here that talks to etcd; everything else is pure and
builds the JSON documents the commands print (their schema is in docs/operator-guide.md and
only ever grows). No function here returns key material: records are read through the
public view (cluster/store/public.py), and the row builders copy named public fields only.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from cluster.hooks.event import format_peer
from cluster.store.client import Store, Versioned
from cluster.store.keyspace import spi_hex
from cluster.store.records import (
    Assignment,
    ChildSaRecord,
    IkeSaRecord,
    KeydRecord,
    MalformedRecord,
    NodeRecord,
    SeqRecord,
)

HANDOFF_STUCK_S = 30.0
"""A hand-off older than this is reported by `health` (the sprayer completes them in ~1 s)."""
UNASSIGNED_GRACE_S = 10.0
"""An IKE SA without an assignment for longer than this is reported by `health`."""


@dataclass
class Snapshot:
    """Every record kind the operator commands need, each read at one revision."""

    revision: int
    nodes: list[Versioned[NodeRecord]]
    keyd: list[Versioned[KeydRecord]]
    ike: list[Versioned[IkeSaRecord]]
    child: list[Versioned[ChildSaRecord]]
    assign: list[Versioned[Assignment]]
    seq: list[Versioned[SeqRecord]]
    malformed: list[MalformedRecord] = field(default_factory=list)

    @property
    def node_ids(self) -> set[str]:
        return {v.record.id for v in self.nodes}


def read_snapshot(store: Store) -> Snapshot:
    listings = [store.list(cls) for cls in (NodeRecord, KeydRecord, IkeSaRecord,
                                             ChildSaRecord, Assignment, SeqRecord)]
    malformed = [bad for listing in listings for bad in listing.malformed]
    nodes, keyd, ike, child, assign, seq = (listing.items for listing in listings)
    return Snapshot(max(listing.revision for listing in listings), nodes, keyd,  # type: ignore[arg-type]
                    ike, child, assign, seq, malformed)  # type: ignore[arg-type]


# -- rows ------------------------------------------------------------------------------------


def node_rows(snap: Snapshot) -> list[dict[str, Any]]:
    """Registered nodes, plus `down` rows for nodes that still own clients but are gone."""
    owned = Counter(v.record.node for v in snap.assign)
    rows = []
    for v in sorted(snap.nodes, key=lambda v: v.record.id):
        n = v.record
        rows.append({"id": n.id, "address": n.address, "capacity": n.capacity,
                     "state": n.state, "health_port": n.health_port, "version": n.version,
                     "started_at": n.started_at, "clients": owned.get(n.id, 0),
                     "lease": f"{v.lease_id:x}" if v.lease_id else None})
    for node_id in sorted(set(owned) - snap.node_ids):
        rows.append({"id": node_id, "address": None, "capacity": None, "state": "down",
                     "health_port": None, "version": None, "started_at": None,
                     "clients": owned[node_id], "lease": None})
    return rows


def keyd_rows(snap: Snapshot) -> list[dict[str, Any]]:
    negotiated = Counter(v.record.keyd_id for v in snap.ike)
    return [{"id": k.record.id, "address": k.record.address, "version": k.record.version,
             "started_at": k.record.started_at, "ike_sas": negotiated.get(k.record.id, 0)}
            for k in sorted(snap.keyd, key=lambda v: v.record.id)]


def _seq_by_spi(snap: Snapshot) -> dict[int, SeqRecord]:
    return {v.record.spi: v.record for v in snap.seq}


def client_rows(snap: Snapshot) -> list[dict[str, Any]]:
    """One row per IKE SA (a connected client), joined with its assignment and Child SAs.

    `packets_in`/`packets_out`/`bytes_in`/`bytes_out` are the inner traffic the owner
    published with its last checkpoint (`seq/`), summed over the client's Child SAs; `bytes`
    is in + out. Each is null while any of those Child SAs has no such count (no checkpoint
    yet, or one written by a node that did not record traffic): never the sequence numbers,
    which include the jump of every unplanned move.
    """
    seq = _seq_by_spi(snap)
    children: dict[str, list[ChildSaRecord]] = {}
    for v in snap.child:
        children.setdefault(v.record.ike_sa_id, []).append(v.record)
    ike = {v.record.ike_sa_id: v.record for v in snap.ike}
    owners = {v.record.ike_sa_id: v.record for v in snap.assign}
    rows = []
    for ike_sa_id in sorted(set(ike) | set(owners)):
        sa = ike.get(ike_sa_id)
        a = owners.get(ike_sa_id)
        mine = sorted(children.get(ike_sa_id, []), key=lambda c: c.created_at)
        counters = [seq.get(c.spi_in) for c in mine]
        traffic = {f: _total(counters, f)
                   for f in ("packets_in", "packets_out", "bytes_in", "bytes_out")}
        b_in, b_out = traffic["bytes_in"], traffic["bytes_out"]
        rows.append({
            "ike_sa_id": ike_sa_id,
            "identity": sa.identity if sa else None,
            "virtual_ip": sa.virtual_ip if sa else None,
            "virtual_ip6": sa.virtual_ip6 if sa else None,
            "peer": format_peer(sa.peer_addr, sa.peer_port) if sa else None,
            "owner": a.node if a else None,
            "owner_alive": (a.node in snap.node_ids) if a else None,
            "epoch": a.epoch if a else None,
            "phase": a.phase if a else None,
            "previous_node": a.previous_node if a else None,
            "child_sas": [spi_hex(c.spi_in) for c in mine],
            "keyd": sa.keyd_id if sa else None,
            "packets_in": traffic["packets_in"],
            "packets_out": traffic["packets_out"],
            "bytes": None if b_in is None or b_out is None else b_in + b_out,
            "bytes_in": b_in,
            "bytes_out": b_out,
            "updated_at": sa.updated_at if sa else None,
        })
    return rows


def _total(records: list[SeqRecord | None], field: str) -> int | None:
    """The sum of one traffic count over a client's Child SAs; None if any does not say."""
    total = 0
    for r in records:
        value = None if r is None else getattr(r, field)
        if not isinstance(value, int):
            return None
        total += value
    return total if records else None


def sa_row(child: ChildSaRecord, a: Assignment | None, s: SeqRecord | None) -> dict[str, Any]:
    """A Child SA's public fields, its owner and its last sequence record. Never keys."""
    return {
        "spi_in": spi_hex(child.spi_in), "spi_out": spi_hex(child.spi_out),
        "ike_sa_id": child.ike_sa_id, "identity": child.identity,
        "virtual_ip": child.virtual_ip, "virtual_ip6": child.virtual_ip6,
        "peer": format_peer(child.peer_addr, child.peer_port),
        "udp_encap": child.udp_encap, "encr": child.encr, "integ": child.integ,
        "esn": child.esn, "ts_local": list(child.ts_local), "ts_remote": list(child.ts_remote),
        "created_at": child.created_at, "soft_lifetime_s": child.soft_lifetime_s,
        "hard_lifetime_s": child.hard_lifetime_s, "replaces": spi_hex(child.replaces),
        "owner": a.node if a else None, "epoch": a.epoch if a else None,
        "policy": child.policy,
        "seq": None if s is None else {
            "owner": s.owner, "epoch": s.epoch, "out_seq": s.out_seq,
            "in_highest": s.in_highest, "kind": s.kind, "written_at": s.written_at,
            "packets_in": s.packets_in, "packets_out": s.packets_out,
            "bytes_in": s.bytes_in, "bytes_out": s.bytes_out},
    }


def sa_rows(snap: Snapshot) -> list[dict[str, Any]]:
    seq = _seq_by_spi(snap)
    owners = {v.record.ike_sa_id: v.record for v in snap.assign}
    return [sa_row(v.record, owners.get(v.record.ike_sa_id), seq.get(v.record.spi_in))
            for v in sorted(snap.child, key=lambda v: v.record.spi_in)]


def read_sa(store: Store, spi_in: int) -> dict[str, Any] | None:
    """One Child SA's row, read by key (no full listing), or None if there is none."""
    child = store.get(ChildSaRecord, spi_in)
    if child is None:
        return None
    a = store.get(Assignment, child.record.ike_sa_id)
    s = store.get(SeqRecord, spi_in)
    return sa_row(child.record, a.record if a else None, s.record if s else None)


# -- health ----------------------------------------------------------------------------------


def health_findings(snap: Snapshot, now: float | None = None) -> list[dict[str, str]]:
    """What is wrong, worst first. `error` findings make the cluster degraded."""
    now = time.time() if now is None else now
    found: list[dict[str, str]] = []

    def add(severity: str, check: str, message: str) -> None:
        found.append({"severity": severity, "check": check, "message": message})

    if not snap.keyd:
        add("error", "keyd", "no keyd registered: no client can connect or rekey")
    ready = [v for v in snap.nodes if v.record.state == "ready"]
    if not ready:
        add("error", "nodes", "no node is ready to carry traffic")
    for row in node_rows(snap):
        if row["state"] == "down":
            add("error", "node-down",
                f"node {row['id']} is gone but owns {row['clients']} client(s)")
        elif row["state"] == "draining":
            add("warning", "node-draining",
                f"node {row['id']} is draining ({row['clients']} client(s) left)")
    for v in snap.assign:
        a = v.record
        if a.phase == "handoff" and now - a.updated_at > HANDOFF_STUCK_S:
            add("error", "handoff",
                f"client {a.ike_sa_id} stuck in hand-off {a.previous_node} -> {a.node} "
                f"for {int(now - a.updated_at)}s")
    assigned = {v.record.ike_sa_id for v in snap.assign}
    unassigned = [v.record for v in snap.ike if v.record.ike_sa_id not in assigned
                  and now - v.record.updated_at > UNASSIGNED_GRACE_S]
    if unassigned:
        add("error", "unassigned",
            f"{len(unassigned)} IKE SA(s) have no owning node (is the sprayer running?)")
    if snap.malformed:
        add("warning", "malformed",
            f"{len(snap.malformed)} record(s) do not decode, e.g. {snap.malformed[0]}")
    order = {"error": 0, "warning": 1}
    return sorted(found, key=lambda f: order[f["severity"]])


def status_doc(snap: Snapshot, cluster: str, endpoints: list[str]) -> dict[str, Any]:
    nodes = node_rows(snap)
    findings = health_findings(snap)
    states = Counter(r["state"] for r in nodes)
    return {
        "cluster": cluster,
        "endpoints": endpoints,
        "revision": snap.revision,
        "healthy": not any(f["severity"] == "error" for f in findings),
        "nodes": {"ready": states.get("ready", 0), "draining": states.get("draining", 0),
                  "down": states.get("down", 0), "total": len(nodes)},
        "keyd": len(snap.keyd),
        "clients": len(snap.ike),
        "child_sas": len(snap.child),
        "handoffs": sum(1 for v in snap.assign if v.record.phase == "handoff"),
        "clients_per_node": {r["id"]: r["clients"] for r in nodes},
        "findings": findings,
    }
