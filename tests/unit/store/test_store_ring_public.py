"""The data-key ring (rotation), the public view, and etcd error translation."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import etcd3.exceptions as etcd_exc
import grpc
import pytest

from cluster.store import (
    ChildSaRecord,
    CompactedError,
    DataKey,
    DataKeyError,
    FutureRevision,
    MalformedRecord,
    NodeRecord,
    PublicView,
    StoreError,
    WrongDataKey,
    decode_record,
    encode_record,
    load_data_key,
)
from cluster.store.errors import translate

KEY = "/ipsec-cluster/t/sa/c0000001"


def child(spi: int = 0xC0000001) -> ChildSaRecord:
    return ChildSaRecord(
        spi_in=spi, spi_out=0x0C000001, ike_sa_id="11" * 8 + "22" * 8, encr="aes128gcm16",
        integ=None, esn=True, enc_key_in=os.urandom(20), integ_key_in=b"",
        enc_key_out=os.urandom(20), integ_key_out=b"", ts_local=["10.20.0.0/16"],
        ts_remote=["10.99.0.7/32"], peer_addr="192.0.2.7", peer_port=4500, udp_encap=True,
        virtual_ip="10.99.0.7", identity="alice@example.net", created_at=time.time(),
        soft_lifetime_s=3300, hard_lifetime_s=3600)


def key_file(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "data.key"
    p.write_text(text)
    p.chmod(0o600)
    return p


# -- the ring ----------------------------------------------------------------------------

def test_ring_opens_retired_and_seals_under_current() -> None:
    old, new = os.urandom(32), os.urandom(32)
    before = DataKey(old, "old")
    ring = DataKey(new, "ring", [old])
    sealed_old = before.seal(b"secret", KEY)
    assert ring.open(sealed_old, KEY) == b"secret"
    assert not ring.is_current(sealed_old)
    sealed_new = ring.seal(b"secret", KEY)
    assert ring.is_current(sealed_new)
    assert sealed_new.startswith(DataKey(new, "n").key_id + ".")
    with pytest.raises(WrongDataKey, match="sealed under data key"):
        before.open(sealed_new, KEY)          # the old key alone cannot read the new one
    assert ring.key_ids == (DataKey(new, "n").key_id, before.key_id)
    assert ring.retired_ids == (before.key_id,)
    assert old.hex() not in repr(ring) and new.hex() not in repr(ring)


def test_ring_wrong_key_names_every_id_held() -> None:
    ring = DataKey(os.urandom(32), "file", [os.urandom(32)])
    stranger = DataKey(os.urandom(32), "x").seal(b"s", KEY)
    with pytest.raises(WrongDataKey) as exc:
        ring.open(stranger, KEY)
    for key_id in ring.key_ids:
        assert key_id in str(exc.value)


def test_key_file_with_several_keys_current_first(tmp_path: Path) -> None:
    old, new = os.urandom(32), os.urandom(32)
    p = key_file(tmp_path, f"# rotated\n{new.hex()}\n\n{old.hex()}  # retired\n")
    ring = load_data_key(p, {})
    assert ring.key_id == DataKey(new, "n").key_id
    assert ring.retired_ids == (DataKey(old, "o").key_id,)


def test_env_ring_comma_separated() -> None:
    old, new = os.urandom(32), os.urandom(32)
    ring = load_data_key(None, {"IPSEC_CLUSTER_DATA_KEY": f"{new.hex()},{old.hex()}"})
    assert ring.key_id == DataKey(new, "n").key_id and len(ring.key_ids) == 2


def test_bad_second_key_is_named(tmp_path: Path) -> None:
    p = key_file(tmp_path, os.urandom(32).hex() + "\n" + "ab" * 10 + "\n")
    with pytest.raises(DataKeyError, match=r"\(key 2\).*10 bytes"):
        load_data_key(p, {})
    with pytest.raises(DataKeyError, match="empty"):
        load_data_key(key_file(tmp_path, "# nothing\n"), {})


def test_record_sealed_under_retired_key_decodes() -> None:
    old_bytes = os.urandom(32)
    rec = child()
    raw = encode_record(rec, KEY, DataKey(old_bytes, "old"))
    assert decode_record(ChildSaRecord, raw, KEY,
                         DataKey(os.urandom(32), "ring", [old_bytes])) == rec
    with pytest.raises(WrongDataKey):
        decode_record(ChildSaRecord, raw, KEY, DataKey(os.urandom(32), "ring",
                                                       [os.urandom(32)]))


# -- the public view ---------------------------------------------------------------------

def test_public_view_decodes_public_fields_only() -> None:
    rec = child()
    raw = encode_record(rec, KEY, DataKey(os.urandom(32), "k"))
    got = decode_record(ChildSaRecord, raw, KEY, PublicView())
    assert got.enc_key_in == got.enc_key_out == got.integ_key_in == got.integ_key_out == b""
    assert (got.spi_in, got.identity, got.ts_local) == (rec.spi_in, rec.identity, rec.ts_local)
    assert rec.enc_key_in.hex() not in repr(got)


def test_public_view_writes_no_key_material() -> None:
    with pytest.raises(ValueError, match="no data key"):
        encode_record(child(), KEY, PublicView())
    node = NodeRecord("n1", "10.30.0.11", 100, "ready", 4501, "0.1", 0.0)
    k = "/ipsec-cluster/t/nodes/n1"
    assert decode_record(NodeRecord, encode_record(node, k, PublicView()), k,
                         PublicView()) == node


@pytest.mark.parametrize("sealed", [None, 5, "", "nodot", "0123456789abcdef.!!!",
                                    "0123456789abcdef.AAAA"])
def test_public_view_rejects_a_bad_sealed_value(sealed: object) -> None:
    body = json.loads(encode_record(child(), KEY, DataKey(os.urandom(32), "k")))
    body["sealed"] = sealed
    with pytest.raises(MalformedRecord, match="sealed"):
        decode_record(ChildSaRecord, json.dumps(body).encode(), KEY, PublicView())


def test_no_data_key_still_refuses_sealed_kinds() -> None:
    raw = encode_record(child(), KEY, DataKey(os.urandom(32), "k"))
    with pytest.raises(MalformedRecord, match="no data key"):
        decode_record(ChildSaRecord, raw, KEY, None)


# -- error translation -------------------------------------------------------------------

class Status(grpc.RpcError):
    """An RPC failure as gRPC raises it: a status code and etcd's description."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_compacted_read_by_status() -> None:
    err = translate(Status(grpc.StatusCode.OUT_OF_RANGE,
                           "etcdserver: mvcc: required revision has been compacted"),
                    "http://e:1", revision=7)
    assert isinstance(err, CompactedError) and err.revision == 7
    assert err.compacted_revision is None


def test_future_revision_by_status() -> None:
    err = translate(Status(grpc.StatusCode.OUT_OF_RANGE,
                           "etcdserver: mvcc: required revision is a future revision"),
                    "http://e:1", revision=10**9)
    assert isinstance(err, FutureRevision) and not isinstance(err, CompactedError)


def test_the_word_alone_is_not_compaction() -> None:
    # Another status, or another description, mentioning the word is not etcd's error.
    for status in (Status(grpc.StatusCode.UNKNOWN, "compacted"),
                   Status(grpc.StatusCode.OUT_OF_RANGE, "etcdserver: too large lease TTL")):
        err = translate(status, "http://e:1")
        assert type(err) is StoreError


def test_watch_compaction_keeps_etcd_compaction_point() -> None:
    err = translate(etcd_exc.RevisionCompactedError(42), "http://e:1", revision=5)
    assert isinstance(err, CompactedError) and err.compacted_revision == 42
    assert "42" in str(err) and "revision 5" in str(err)
