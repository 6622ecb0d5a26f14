from __future__ import annotations

import contextlib
import dataclasses
import json
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.store import (
    Assignment,
    ChildSaRecord,
    DataKey,
    IkeSaRecord,
    KeydRecord,
    MalformedRecord,
    NodeRecord,
    Policy,
    PoolLease,
    SeqRecord,
    UnknownVersion,
    WrongDataKey,
    decode_record,
    encode_record,
)

KEY = DataKey(os.urandom(32), "/etc/ipsec-cluster/data.key")
K = "/ipsec-cluster/t/sa/00000100"

spis = st.integers(256, 2**32 - 1)
ips = st.ip_addresses(v=4).map(str)
texts = st.text(max_size=30)
times = st.floats(0, 2e9, allow_nan=False)
ports = st.integers(0, 65535)
keys = st.binary(max_size=36)
cidrs = st.tuples(ips, st.integers(8, 32)).map(lambda t: f"{t[0]}/{t[1]}")
names = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,20}\Z")
# policy rules (cluster.policy.rules): a network, a protocol with ports, or both
rules = st.one_of(cidrs, st.sampled_from(["udp/53", "tcp/80,443", "icmp", "any", "47"]),
                  st.tuples(cidrs, st.sampled_from(["tcp/22", "udp/500-4500", "sctp"])).map(
                      " ".join))

child_sas = st.builds(
    ChildSaRecord, spi_in=spis, spi_out=spis, ike_sa_id=st.just("00" * 16),
    encr=st.sampled_from(["aes128gcm16", "aes256", "chacha20poly1305"]),
    integ=st.none() | st.just("sha256"), esn=st.booleans(), enc_key_in=keys,
    integ_key_in=keys, enc_key_out=keys, integ_key_out=keys, ts_local=st.lists(cidrs),
    ts_remote=st.lists(cidrs), peer_addr=ips, peer_port=ports, udp_encap=st.booleans(),
    virtual_ip=st.none() | ips, identity=texts, created_at=times,
    soft_lifetime_s=st.integers(0, 10**6), hard_lifetime_s=st.integers(0, 10**6),
    replaces=st.none() | spis)
modes = st.sampled_from(["full", "split", "guest"])
# a Child SA bound to a policy: its name, and the snapshot keyd had (mode None: none)
child_sas_with_policy = st.builds(
    lambda r, name, mode, allowed, denied: dataclasses.replace(
        r, policy=name, policy_mode=mode, policy_allowed=allowed if mode else [],
        policy_denied=denied if mode else []),
    child_sas, names, st.none() | modes, st.lists(rules, max_size=4),
    st.lists(rules, max_size=4))


@st.composite
def ike_sas(draw: st.DrawFn) -> IkeSaRecord:
    i, r = draw(st.integers(0, 2**64 - 1)), draw(st.integers(0, 2**64 - 1))
    return IkeSaRecord(f"{i:016x}{r:016x}", i, r, draw(ips), draw(ports), draw(ports),
                       draw(texts), draw(st.none() | ips), draw(st.lists(spis)), draw(texts),
                       draw(times), draw(st.binary(max_size=300)))


plain_records = st.one_of(
    st.builds(NodeRecord, id=texts, address=ips, capacity=st.integers(0, 1000),
              state=st.sampled_from(["ready", "draining"]), health_port=ports, version=texts,
              started_at=times),
    st.builds(KeydRecord, id=texts, address=ips, version=texts, started_at=times),
    st.builds(Assignment, ike_sa_id=st.just("ab" * 16), node=texts, epoch=st.integers(0, 2**62),
              phase=st.sampled_from(["active", "handoff"]), previous_node=st.none() | texts,
              updated_at=times),
    st.builds(SeqRecord, spi=spis, owner=texts, epoch=st.integers(0, 2**62),
              out_seq=st.integers(0, 2**64 - 1), in_highest=st.integers(0, 2**64 - 1),
              in_bitmap=st.integers(0, 2**1024), kind=st.sampled_from(["checkpoint", "final"]),
              written_at=times),
    st.builds(PoolLease, ip=ips, ike_sa_id=st.just("ab" * 16), identity=texts, keyd_id=texts,
              leased_at=times),
    st.builds(Policy, name=names, identities=st.lists(texts),
              mode=st.sampled_from(["full", "split", "guest"]), allowed=st.lists(rules),
              denied=st.lists(rules)),
)


@given(plain_records)
def test_plain_roundtrip(record: object) -> None:
    raw = encode_record(record, K)  # type: ignore[arg-type]
    assert decode_record(type(record), raw, K) == record  # type: ignore[arg-type]


@given(st.one_of(child_sas, child_sas_with_policy, ike_sas()))
def test_sealed_roundtrip_and_no_plaintext(record: ChildSaRecord | IkeSaRecord) -> None:
    raw = encode_record(record, K, KEY)
    assert decode_record(type(record), raw, K, KEY) == record
    # and with high-entropy secrets, none of them shows in the stored bytes or the repr
    record = dataclasses.replace(record, **{  # type: ignore[arg-type]
        n: os.urandom(16 + len(getattr(record, n))) for n in record.SECRET_FIELDS})
    raw = encode_record(record, K, KEY)
    assert decode_record(type(record), raw, K, KEY) == record
    body = json.loads(raw)
    for name in record.SECRET_FIELDS:
        assert name not in body
        secret = getattr(record, name)
        assert secret.hex().encode() not in raw and secret not in raw
    assert "redacted" in repr(record)
    for name in record.SECRET_FIELDS:
        secret = getattr(record, name)
        assert secret.hex() not in repr(record) and repr(secret) not in repr(record)


def sample_sa() -> ChildSaRecord:
    return ChildSaRecord(0x100, 0x200, "00" * 16, "aes128gcm16", None, False, b"k" * 20, b"",
                         b"o" * 20, b"", ["10.20.0.0/16"], ["10.99.0.1/32"], "192.0.2.1", 4500,
                         True, "10.99.0.1", "a@b", 1.0, 3000, 3600)


def test_wrong_key_names_its_source() -> None:
    raw = encode_record(sample_sa(), K, KEY)
    other = DataKey(os.urandom(32), "/tmp/other.key")
    with pytest.raises(WrongDataKey, match=r"/tmp/other\.key"):
        decode_record(ChildSaRecord, raw, K, other)


def test_associated_data_is_the_etcd_key() -> None:
    raw = encode_record(sample_sa(), K, KEY)
    with pytest.raises(WrongDataKey):
        decode_record(ChildSaRecord, raw, "/ipsec-cluster/t/sa/00000101", KEY)


def test_sealed_record_needs_a_data_key() -> None:
    with pytest.raises(ValueError, match="data key"):
        encode_record(sample_sa(), K, None)
    raw = encode_record(sample_sa(), K, KEY)
    with pytest.raises(MalformedRecord):
        decode_record(ChildSaRecord, raw, K, None)


def node_json(**over: object) -> bytes:
    body: dict[str, object] = {"v": 1, "id": "n1", "address": "10.0.0.1", "capacity": 5,
                               "state": "ready", "health_port": 4501, "version": "1",
                               "started_at": 1}
    body.update(over)
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


def test_int_widens_to_float() -> None:
    assert decode_record(NodeRecord, node_json(), K).started_at == 1.0


@pytest.mark.parametrize(("raw", "why"), [
    (b"", "not JSON"), (b"\xff\xfe", "not JSON"), (b"[1,2]", "not a JSON object"),
    (node_json(capacity="5"), "capacity"), (node_json(capacity=True), "capacity"),
    (node_json(capacity=5.5), "capacity"), (node_json(state="gone"), "state"),
    (node_json(address="nowhere"), "address"), (node_json(health_port=70000), "port"),
    (node_json(id=...), "id: missing"), (node_json(started_at="x"), "started_at"),
])
def test_malformed(raw: bytes, why: str) -> None:
    with pytest.raises(MalformedRecord, match=why) as exc:
        decode_record(NodeRecord, raw, K)
    assert exc.value.key == K


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_unknown_version(version: object) -> None:
    with pytest.raises(UnknownVersion):
        decode_record(NodeRecord, node_json(v=version), K)


def test_unknown_extra_fields_are_ignored() -> None:
    assert decode_record(NodeRecord, node_json(future="x"), K).id == "n1"


def test_tampered_sealed_blob_is_not_malformed_silently() -> None:
    body = json.loads(encode_record(sample_sa(), K, KEY))
    kid, blob = body["sealed"].split(".")
    body["sealed"] = kid + ".AAAA" + blob[4:]
    with pytest.raises(WrongDataKey):
        decode_record(ChildSaRecord, json.dumps(body).encode(), K, KEY)
    body["sealed"] = kid + ".!!"
    with pytest.raises(MalformedRecord):
        decode_record(ChildSaRecord, json.dumps(body).encode(), K, KEY)


def test_validation_on_encode() -> None:
    bad = IkeSaRecord("00" * 16, 1, 2, "192.0.2.1", 500, 500, "x", None, [], "k", 0.0, b"")
    with pytest.raises(ValueError, match="ike_sa_id"):
        encode_record(bad, K, KEY)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12)


@given(st.sampled_from([NodeRecord, ChildSaRecord, IkeSaRecord, Assignment, SeqRecord,
                        PoolLease, Policy, KeydRecord]),
       st.one_of(st.binary(max_size=200),
                 json_values.map(lambda v: json.dumps(v).encode()),
                 st.dictionaries(texts, json_values, max_size=6).map(
                     lambda d: json.dumps({"v": 1, **d}).encode())))
def test_junk_is_a_typed_error_only(cls: type, raw: bytes) -> None:
    """Whatever sits in etcd, decoding raises MalformedRecord (or WrongDataKey), nothing else."""
    with contextlib.suppress(MalformedRecord, WrongDataKey):
        decode_record(cls, raw, K, KEY)


@given(st.sampled_from(["id", "address", "capacity", "state", "health_port", "version",
                        "started_at", "v"]), json_values)
def test_one_bad_field_is_a_typed_error(name: str, value: object) -> None:
    raw = node_json(**{name: value})
    try:
        record = decode_record(NodeRecord, raw, K)
    except MalformedRecord:
        return
    assert getattr(record, name, value) == value or name == "started_at"


def _child_body(record: ChildSaRecord) -> dict[str, object]:
    return json.loads(encode_record(record, K, KEY))  # type: ignore[no-any-return]


@given(child_sas)
def test_child_sa_without_policy_fields_reads_as_no_policy(record: ChildSaRecord) -> None:
    """A record written before policies existed has none of the policy fields: no policy."""
    body = _child_body(record)
    for name in ("policy", "policy_mode", "policy_allowed", "policy_denied"):
        body.pop(name)
    back = decode_record(ChildSaRecord, json.dumps(body).encode(), K, KEY)
    assert back.policy is None and back.policy_mode is None
    assert back.policy_allowed == [] and back.policy_denied == []


@pytest.mark.parametrize("fields", [
    {"policy": "guest", "policy_mode": "guest", "policy_denied": ["tcp/99999"]},
    {"policy": "guest", "policy_mode": "open"},
    {"policy": "a/b", "policy_mode": "full"},
    {"policy": None, "policy_mode": "full"},
    {"policy": "guest", "policy_mode": None, "policy_allowed": ["10.0.0.0/8"]},
    {"policy": "guest", "policy_mode": "split", "policy_allowed": "10.0.0.0/8"},
])
def test_child_sa_with_a_bad_policy_snapshot_is_malformed(fields: dict[str, object]) -> None:
    record = ChildSaRecord(
        spi_in=0x100, spi_out=0x200, ike_sa_id="00" * 16, encr="aes128gcm16", integ=None,
        esn=False, enc_key_in=b"k" * 20, integ_key_in=b"", enc_key_out=b"k" * 20,
        integ_key_out=b"", ts_local=["0.0.0.0/0"], ts_remote=["10.99.0.2/32"],
        peer_addr="192.0.2.10", peer_port=4500, udp_encap=True, virtual_ip="10.99.0.2",
        identity="c@example.org", created_at=1.0, soft_lifetime_s=3000, hard_lifetime_s=3600)
    body = _child_body(record)
    body.update(fields)
    with pytest.raises(MalformedRecord):
        decode_record(ChildSaRecord, json.dumps(body).encode(), K, KEY)


@pytest.mark.parametrize("allowed, denied", [
    (["10.0.0.0/33"], []), (["tcp/0-70000"], []), ([], ["icmp/80"]), ([], ["bogus"]),
    (["10.20.0.0/16 tcp/80 extra"], []), ([""], []),
])
def test_policy_with_a_bad_rule_is_malformed(allowed: list[str], denied: list[str]) -> None:
    body = {"v": 1, "name": "p", "identities": ["*"], "mode": "split", "allowed": allowed,
            "denied": denied}
    with pytest.raises(MalformedRecord):
        decode_record(Policy, json.dumps(body).encode(), "/ipsec-cluster/t/policy/p")


def test_policy_written_before_rule_syntax_still_reads() -> None:
    """Records of the first Policy codec (CIDRs only, host bits allowed) stay valid."""
    body = {"v": 1, "name": "full", "identities": ["*"], "mode": "full",
            "allowed": ["0.0.0.0/0"], "denied": ["10.1.2.3/8"]}
    p = decode_record(Policy, json.dumps(body).encode(), "/ipsec-cluster/t/policy/full")
    assert p.denied == ["10.1.2.3/8"]
