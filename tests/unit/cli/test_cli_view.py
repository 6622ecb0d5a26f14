"""The operator's view of a keyspace snapshot: rows and health findings (no etcd)."""

from __future__ import annotations

from cluster.cli.view import Snapshot, client_rows, health_findings, node_rows, status_doc
from cluster.store.client import Versioned
from cluster.store.records import (
    Assignment,
    IkeSaRecord,
    KeydRecord,
    MalformedRecord,
    NodeRecord,
)

NOW = 1_800_000_000.0


def v(record: object) -> Versioned:  # type: ignore[type-arg]
    return Versioned(record, "k", 1, 1, 0)


def ike(n: int, updated_at: float = NOW) -> IkeSaRecord:
    return IkeSaRecord(f"{n:016x}{n:016x}", n, n, "192.0.2.9", 4500, 4500, f"c{n}", None, [],
                       "keyd-1", updated_at, b"")


def snapshot(**kw: list) -> Snapshot:  # type: ignore[type-arg]
    base: dict[str, list] = {  # type: ignore[type-arg]
        "nodes": [v(NodeRecord("n1", "10.0.0.1", 10, "ready", 4501, "1", NOW))],
        "keyd": [v(KeydRecord("keyd-1", "10.0.0.5", "1", NOW))],
        "ike": [], "child": [], "assign": [], "seq": []}
    base.update(kw)
    return Snapshot(1, **base)


def checks(snap: Snapshot) -> dict[str, str]:
    return {f["check"]: f["severity"] for f in health_findings(snap, NOW)}


def test_healthy() -> None:
    assert checks(snapshot()) == {}


def test_stuck_handoff_and_unassigned_and_malformed() -> None:
    a = ike(1)
    snap = snapshot(
        ike=[v(a), v(ike(2, updated_at=NOW - 60)), v(ike(3, updated_at=NOW - 1))],
        assign=[v(Assignment(a.ike_sa_id, "n1", 2, "handoff", "n0", NOW - 31))])
    snap.malformed.append(MalformedRecord("/x/sa/00000001", "not JSON"))
    found = checks(snap)
    # c2 is old and unassigned; c3 is still within its grace period
    assert found == {"handoff": "error", "unassigned": "error", "malformed": "warning"}
    assert "1 IKE SA(s)" in next(f["message"] for f in health_findings(snap, NOW)
                                 if f["check"] == "unassigned")


def test_node_down_no_ready_node_no_keyd() -> None:
    a = ike(1)
    snap = snapshot(nodes=[v(NodeRecord("n1", "10.0.0.1", 10, "draining", 4501, "1", NOW))],
                    keyd=[], ike=[v(a)],
                    assign=[v(Assignment(a.ike_sa_id, "gone", 1, "active", None, NOW))])
    found = checks(snap)
    assert found == {"keyd": "error", "nodes": "error", "node-down": "error",
                     "node-draining": "warning"}
    assert [r["state"] for r in node_rows(snap)] == ["draining", "down"]
    (row,) = client_rows(snap)
    assert (row["owner"], row["owner_alive"]) == ("gone", False)
    assert status_doc(snap, "c", ["http://e:1"])["healthy"] is False
