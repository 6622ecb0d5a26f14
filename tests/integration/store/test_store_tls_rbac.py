"""The store over TLS with client certificates, and each component confined by etcd RBAC."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from cluster.store import (
    Assignment,
    ChildSaRecord,
    NodeRecord,
    PermissionDenied,
    Policy,
    RecordPut,
    SeqRecord,
    StoreError,
    WatchEvent,
)
from cluster.store.watch import wait_for

Factory = Callable[..., Any]


def test_tls_roundtrip_as_keyd(tls_cluster: Any, child_sa: Factory) -> None:
    with tls_cluster.store("keyd-1") as keyd:
        sa = child_sa(0xF0000001)
        keyd.put(sa)
        got = keyd.get(ChildSaRecord, 0xF0000001)
        assert got is not None and got.record == sa


def test_node_credentials_cannot_write_sa(tls_cluster: Any, child_sa: Factory) -> None:
    with tls_cluster.store("keyd-1") as keyd:
        keyd.put(child_sa(0xF0000002))
    with tls_cluster.store("node-1") as node:
        assert node.get(ChildSaRecord, 0xF0000002) is not None       # may read sa/
        with pytest.raises(PermissionDenied) as exc:
            node.put(child_sa(0xF0000003))                            # may not write it
        assert "permission denied" in str(exc.value).lower()
        with pytest.raises(PermissionDenied):
            node.delete(ChildSaRecord, 0xF0000002)
        with pytest.raises(PermissionDenied):
            node.put(Assignment("ab" * 16, "node-1", 9, "active", None, time.time()))
        # what a node may write: seq/ and its own nodes/<id>, nothing of another node
        node.put(SeqRecord(0xF0000002, "node-1", 1, 10, 9, 1, "checkpoint", time.time()))
        node.put(NodeRecord("node-1", "10.30.0.11", 100, "ready", 4501, "0.1", time.time()))
        with pytest.raises(PermissionDenied):
            node.put(NodeRecord("node-2", "10.30.0.12", 100, "ready", 4501, "0.1", 0.0))


def test_node_watches_sa_over_tls(tls_cluster: Any, child_sa: Factory) -> None:
    seen: list[WatchEvent] = []
    with tls_cluster.store("node-2") as node, tls_cluster.store("keyd-1") as keyd:
        w = node.watch(ChildSaRecord, seen.append)
        try:
            keyd.put(child_sa(0xF0000010))
            assert wait_for(lambda: any(isinstance(e, RecordPut) and
                                        e.record.spi_in == 0xF0000010 for e in seen), 20)
        finally:
            w.stop()


def test_sprayer_writes_assign_only(tls_cluster: Any, child_sa: Factory) -> None:
    with tls_cluster.store("sprayer-1") as sprayer:
        assert sprayer.create(Assignment("cd" * 16, "node-1", 1, "active", None, time.time()))
        sprayer.list(ChildSaRecord)                                   # may read the rest
        with pytest.raises(PermissionDenied):
            sprayer.put(child_sa(0xF0000020))
        with pytest.raises(PermissionDenied):
            sprayer.put(Policy("guest", ["*@guest.example.net"], "guest", [], []))


def test_sprayer_can_hold_the_leader_key_under_rbac(tls_cluster: Any) -> None:
    from sprayer.leader import Leadership

    with tls_cluster.store("sprayer-1") as sprayer:
        leadership = Leadership(sprayer, "sprayer-1", 5)
        try:
            assert leadership.step()
            assert leadership.holder() == "sprayer-1"
        finally:
            leadership.resign()


def test_keyd_cannot_write_policy_or_seq(tls_cluster: Any) -> None:
    with tls_cluster.store("keyd-1") as keyd:
        with pytest.raises(PermissionDenied):
            keyd.put(Policy("full", ["*"], "full", ["0.0.0.0/0"], []))
        with pytest.raises(PermissionDenied):
            keyd.put(SeqRecord(0xF0000002, "node-1", 1, 10, 9, 1, "checkpoint", time.time()))


def test_root_administers(tls_cluster: Any) -> None:
    with tls_cluster.store("root") as root:
        root.put(Policy("full", ["*"], "full", ["0.0.0.0/0"], []))
        assert root.get(Policy, "full") is not None


def test_no_client_certificate_is_refused(tls_cluster: Any) -> None:
    with tls_cluster.store(None) as anon, pytest.raises(StoreError):
        anon.get(ChildSaRecord, 0xF0000002)


def test_rbac_setup_runs_again_and_converges(tls_cluster: Any, child_sa: Factory) -> None:
    from cluster.grants import Grant
    from cluster.store.rbac import apply_rbac, role_grants, setup_etcd_rbac

    root_key = tls_cluster.keyspace.root
    with tls_cluster.store("root") as root:
        before = role_grants(root, "node-1")
        # auth is on and everything exists: a second (and third) run succeeds unchanged
        for _ in range(2):
            setup_etcd_rbac(root, [("keyd", "keyd-1"), ("node", "node-1"),
                                   ("node", "node-2"), ("sprayer", "sprayer-1")])
        assert role_grants(root, "node-1") == before
        # a changed grant list: what is no longer wanted is revoked, a new perm replaces
        apply_rbac(root, [("extra-1", [Grant(f"{root_key}seq/", "read"),
                                       Grant(f"{root_key}policy/", "read")])])
        apply_rbac(root, [("extra-1", [Grant(f"{root_key}seq/", "readwrite")])])
        grants = role_grants(root, "extra-1")
        assert list(grants.values()) == ["readwrite"]
        assert [k for k, _ in grants] == [f"{root_key}seq/".encode()]
    with tls_cluster.store("node-1") as node:                 # still confined as before
        with pytest.raises(PermissionDenied):
            node.put(child_sa(0xF0000031))
        node.put(SeqRecord(0xF0000031, "node-1", 1, 1, 0, 0, "checkpoint", time.time()))
