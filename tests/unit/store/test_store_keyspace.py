from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.store import BadKey, Keyspace, ike_sa_id, parse_ike_sa_id, parse_spi, spi_hex


def test_layout() -> None:
    ks = Keyspace("prod")
    assert ks.root == "/ipsec-cluster/prod/"
    assert ks.node("node-1") == "/ipsec-cluster/prod/nodes/node-1"
    assert ks.keyd("keyd-1") == "/ipsec-cluster/prod/keyd/keyd-1"
    assert ks.sa(0xC1) == "/ipsec-cluster/prod/sa/000000c1"
    assert ks.seq(0xDEADBEEF) == "/ipsec-cluster/prod/seq/deadbeef"
    ike = ike_sa_id(0x0102030405060708, 0xA0B0C0D0E0F00010)
    assert ike == "0102030405060708a0b0c0d0e0f00010"
    assert ks.ike(ike) == f"/ipsec-cluster/prod/ike/{ike}"
    assert ks.assign(ike) == f"/ipsec-cluster/prod/assign/{ike}"
    assert ks.pool("10.99.0.7") == "/ipsec-cluster/prod/pool/10.99.0.7"
    assert ks.policy("guest") == "/ipsec-cluster/prod/policy/guest"
    assert Keyspace("lab", "/x").kind_prefix("sa") == "/x/lab/sa/"


@pytest.mark.parametrize("bad", [
    lambda ks: ks.sa(0), lambda ks: ks.sa(2**32), lambda ks: ks.node("a/b"),
    lambda ks: ks.node(""), lambda ks: ks.pool("10.99.0.300"), lambda ks: ks.ike("xyz"),
    lambda ks: ks.kind_prefix("other"), lambda ks: Keyspace("a/b"),
    lambda ks: Keyspace("c", "noslash"), lambda ks: ks.split("/elsewhere/sa/00000001"),
    lambda ks: ks.split(ks.root + "bogus/1"),
])
def test_bad_keys(bad: object) -> None:
    with pytest.raises(BadKey):
        bad(Keyspace("prod"))  # type: ignore[operator]


@given(st.integers(1, 2**32 - 1))
def test_spi_roundtrip(spi: int) -> None:
    text = spi_hex(spi)
    assert len(text) == 8 and text == text.lower()
    assert parse_spi(text) == spi


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_ike_sa_id_roundtrip(i: int, r: int) -> None:
    assert parse_ike_sa_id(ike_sa_id(i, r)) == (i, r)


def test_split() -> None:
    ks = Keyspace("prod")
    assert ks.split(ks.sa(5)) == ("sa", "00000005")
    assert ks.split(ks.node("n1").encode()) == ("nodes", "n1")
