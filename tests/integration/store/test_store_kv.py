"""Typed reads and writes, compare-and-swap, SPI allocation, sealing — on a real etcd."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cluster.store import (
    Assignment,
    ChildSaRecord,
    DataKey,
    Guard,
    IkeSaRecord,
    Keyspace,
    MalformedRecord,
    NodeRecord,
    SeqRecord,
    Store,
    StoreError,
    StoreUnavailable,
    WrongDataKey,
    load_data_key,
    write_data_key,
)

Factory = Callable[..., Any]


def test_typed_roundtrip_and_list(store: Store, child_sa: Factory) -> None:
    sa = child_sa(0xC1000001)
    rev = store.put(sa)
    got = store.get(ChildSaRecord, 0xC1000001)
    assert got is not None and got.record == sa and got.mod_revision == rev
    assert got.key == store.keyspace.root + "sa/c1000001"
    assert store.get(ChildSaRecord, 0xC1000002) is None
    store.put(child_sa(0xC1000002))
    listing = store.list(ChildSaRecord)
    assert sorted(v.record.spi_in for v in listing.items) == [0xC1000001, 0xC1000002]
    assert listing.revision >= rev and listing.malformed == []
    assert store.delete(ChildSaRecord, 0xC1000001)
    assert not store.delete(ChildSaRecord, 0xC1000001)


def test_create_if_absent_and_update_if_mod_revision(store: Store) -> None:
    ike = "ab" * 16
    a1 = Assignment(ike, "node-1", 1, "active", None, time.time())
    assert store.create(a1)
    assert not store.create(a1)  # already there
    cur = store.get(Assignment, ike)
    assert cur is not None
    a2 = Assignment(ike, "node-2", 2, "handoff", "node-1", time.time())
    assert store.update_if(a2, cur.mod_revision)
    # a second writer holding the old revision loses: fencing on the epoch's revision
    assert not store.update_if(Assignment(ike, "node-3", 2, "handoff", "node-1", time.time()),
                               cur.mod_revision)
    now = store.get(Assignment, ike)
    assert now is not None and now.record == a2
    assert not store.delete_if(Assignment, ike, cur.mod_revision)
    assert store.delete_if(Assignment, ike, now.mod_revision)


def test_commit_guarded_by_assignment(store: Store) -> None:
    """A final seq record written only while the writer's assignment is unchanged."""
    ike = "cd" * 16
    store.create(Assignment(ike, "node-1", 5, "handoff", None, time.time()))
    a = store.get(Assignment, ike)
    assert a is not None
    final = SeqRecord(0xC1000009, "node-1", 5, 1000, 990, 0xFFFF, "final", time.time())
    assert store.commit([final], guards=[Guard(a.key, a.mod_revision)])
    store.put(Assignment(ike, "node-2", 6, "active", "node-1", time.time()))
    late = SeqRecord(0xC1000009, "node-1", 5, 1001, 990, 0xFFFF, "final", time.time())
    assert not store.commit([late], guards=[Guard(a.key, a.mod_revision)])
    got = store.get(SeqRecord, 0xC1000009)
    assert got is not None and got.record.out_seq == 1000


def test_put_many_in_batches(store: Store, child_sa: Factory) -> None:
    records = [child_sa(0xD0000000 + i) for i in range(300)]
    store.put_many(records)
    assert len(store.list(ChildSaRecord).items) == 300


def test_spi_allocation_retries_on_collision(store: Store, child_sa: Factory) -> None:
    store.put(child_sa(0xAAAAAAAA))
    draws = iter([0, 1, 0xAAAAAAAA, 0xBBBBBBBB])
    sa = store.allocate_spi(lambda spi: child_sa(spi), draw=lambda: next(draws))
    assert sa.spi_in == 0xBBBBBBBB  # 0 and 1 are reserved, 0xaaaaaaaa is taken
    got = store.get(ChildSaRecord, 0xAAAAAAAA)
    assert got is not None and got.record.spi_in == 0xAAAAAAAA


def test_spi_allocation_unique_without_patching(store: Store, child_sa: Factory) -> None:
    spis = {store.allocate_spi(lambda spi: child_sa(spi)).spi_in for _ in range(50)}
    assert len(spis) == 50 and all(256 <= s < 2**32 for s in spis)


def _forms(secret: bytes) -> list[bytes]:
    return [secret, secret.hex().encode(), secret.hex().upper().encode(),
            base64.b64encode(secret), base64.urlsafe_b64encode(secret)]


def test_raw_bytes_hold_no_key_material(store: Store, tmp_path: Path, child_sa: Factory,
                                        ike_sa: Factory) -> None:
    sa = child_sa(0xC2000001, integ="sha256", encr="aes256", enc_key_in=os.urandom(32),
                  integ_key_in=os.urandom(32), enc_key_out=os.urandom(32),
                  integ_key_out=os.urandom(32))
    ike = ike_sa()
    store.put(sa)
    store.put(ike)
    raw_sa = store.raw_get(store.key_of(sa))
    raw_ike = store.raw_get(store.key_of(ike))
    assert raw_sa and raw_ike
    for secret in (sa.enc_key_in, sa.integ_key_in, sa.enc_key_out, sa.integ_key_out):
        for form in _forms(secret):
            assert form not in raw_sa
        for form in _forms(secret[:8]):  # not even a fragment
            assert form not in raw_sa
    for form in _forms(ike.state) + _forms(ike.state[:8]):
        assert form not in raw_ike
    data_key = bytes.fromhex((tmp_path / "data.key").read_text())
    for form in _forms(data_key):  # nor the data key itself
        assert form not in raw_sa and form not in raw_ike
    got = store.get(IkeSaRecord, ike.ike_sa_id)
    assert got is not None and got.record.state == ike.state


def test_wrong_data_key_names_the_key_file(store: Store, etcd_endpoint: str,
                                           tmp_path: Path, child_sa: Factory) -> None:
    store.put(child_sa(0xC3000001))
    other = write_data_key(tmp_path / "other.key")
    reader = Store([etcd_endpoint], store.keyspace, other)
    try:
        with pytest.raises(WrongDataKey) as exc:
            reader.get(ChildSaRecord, 0xC3000001)
        assert str(tmp_path / "other.key") in str(exc.value)
        assert "sa/c3000001" in str(exc.value)
    finally:
        reader.close()


def test_sealed_value_moved_to_another_key_does_not_open(store: Store,
                                                         child_sa: Factory) -> None:
    sa = child_sa(0xC4000001)
    store.put(sa)
    raw = store.raw_get(store.key_of(sa))
    assert raw is not None
    moved = raw.replace(b'"spi_in":3288334337', b'"spi_in":3288334338')
    store.raw_put(store.keyspace.sa(0xC4000002), moved)
    with pytest.raises(WrongDataKey):
        store.get(ChildSaRecord, 0xC4000002)


def test_malformed_values_on_read(store: Store) -> None:
    store.raw_put(store.keyspace.node("n1"), b"{not json")
    store.raw_put(store.keyspace.node("n2"), b'{"v": 99, "id": "n2"}')
    store.put(NodeRecord("n3", "10.30.0.13", 100, "ready", 4501, "0.1", time.time()))
    with pytest.raises(MalformedRecord, match="not JSON"):
        store.get(NodeRecord, "n1")
    listing = store.list(NodeRecord)
    assert [v.record.id for v in listing.items] == ["n3"]
    assert len(listing.malformed) == 2


def test_unreachable_etcd_is_one_clear_error(tmp_path: Path) -> None:
    from cluster.procs import free_port
    port = free_port()
    s = Store([f"http://127.0.0.1:{port}"], Keyspace("x"), timeout_s=1.0)
    try:
        with pytest.raises(StoreUnavailable) as exc:
            s.get(NodeRecord, "n1")
        msg = str(exc.value)
        assert f"127.0.0.1:{port}" in msg and "\n" not in msg
        with pytest.raises(StoreUnavailable):  # and again right after: still the same error
            s.revision()
    finally:
        s.close()


def test_bad_endpoint_and_tls_files() -> None:
    with pytest.raises(StoreError, match="bad etcd endpoint"):
        Store(["nohostport"])
    with pytest.raises(StoreError, match=r"/nonexistent/ca\.pem"):
        Store(["https://127.0.0.1:2379"], cacert="/nonexistent/ca.pem")


def test_data_key_from_env(store: Store, etcd_endpoint: str, child_sa: Factory) -> None:
    assert store.data_key is not None
    env_key = load_data_key(None, {"IPSEC_CLUSTER_DATA_KEY": os.urandom(32).hex()})
    assert isinstance(env_key, DataKey) and "IPSEC_CLUSTER_DATA_KEY" in repr(env_key)
    store.put(child_sa(0xC5000001))
    reader = Store([etcd_endpoint], store.keyspace, env_key)
    try:
        with pytest.raises(WrongDataKey, match="IPSEC_CLUSTER_DATA_KEY"):
            reader.get(ChildSaRecord, 0xC5000001)
    finally:
        reader.close()


def test_scan_reads_in_pages_at_one_revision(store: Store, child_sa: Factory) -> None:
    store.put_many([child_sa(0xD1000000 + i) for i in range(23)])
    kvs, revision = store.scan(store.keyspace.kind_prefix("sa"), page=5)
    assert len(kvs) == 23 and len({kv.key for kv in kvs}) == 23
    assert revision == store.revision()


def test_record_under_the_wrong_key_is_malformed(store: Store) -> None:
    n2 = NodeRecord("n2", "10.30.0.12", 100, "ready", 4501, "0.1", time.time())
    _, value = store.encode(n2)
    store.raw_put(store.keyspace.node("n1"), value)
    with pytest.raises(MalformedRecord, match="not for this key"):
        store.get(NodeRecord, "n1")
