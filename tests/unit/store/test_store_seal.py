from __future__ import annotations

import os
from pathlib import Path

import pytest

from cluster.store import DataKey, DataKeyError, WrongDataKey, load_data_key, write_data_key


def test_file_key_hex_and_raw(tmp_path: Path) -> None:
    raw = os.urandom(32)
    p = tmp_path / "raw.key"
    p.write_bytes(raw)
    p.chmod(0o600)
    h = tmp_path / "hex.key"
    h.write_text(raw.hex() + "\n")
    h.chmod(0o600)
    a, b = load_data_key(p, {}), load_data_key(h, {})
    assert a.key_id == b.key_id
    assert b.open(a.seal(b"secret", "/k"), "/k") == b"secret"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_refuses_readable_key_file(tmp_path: Path, mode: int) -> None:
    p = tmp_path / "data.key"
    p.write_text(os.urandom(32).hex())
    p.chmod(mode)
    with pytest.raises(DataKeyError, match=f"{p}.*chmod 600"):
        load_data_key(p, {})


def test_missing_and_bad_keys(tmp_path: Path) -> None:
    with pytest.raises(DataKeyError, match="no data key"):
        load_data_key(None, {})
    with pytest.raises(DataKeyError, match=r"nope\.key"):
        load_data_key(tmp_path / "nope.key", {})
    p = tmp_path / "short.key"
    p.write_text("abcd")
    p.chmod(0o600)
    with pytest.raises(DataKeyError, match=r"short\.key"):
        load_data_key(p, {})
    with pytest.raises(DataKeyError, match="IPSEC_CLUSTER_DATA_KEY"):
        load_data_key(None, {"IPSEC_CLUSTER_DATA_KEY": "zz"})


def test_env_wins_over_file(tmp_path: Path) -> None:
    f = write_data_key(tmp_path / "data.key")
    e = load_data_key(tmp_path / "data.key", {"IPSEC_CLUSTER_DATA_KEY": os.urandom(32).hex()})
    assert e.source == "$IPSEC_CLUSTER_DATA_KEY" and e.key_id != f.key_id


def test_write_data_key_mode_and_no_overwrite(tmp_path: Path) -> None:
    k = write_data_key(tmp_path / "data.key")
    assert (tmp_path / "data.key").stat().st_mode & 0o777 == 0o600
    assert load_data_key(tmp_path / "data.key", {}).key_id == k.key_id
    with pytest.raises(FileExistsError):
        write_data_key(tmp_path / "data.key")


def test_repr_never_shows_key_bytes() -> None:
    raw = os.urandom(32)
    k = DataKey(raw, "/etc/k")
    for text in (repr(k), str(k), f"{k}"):
        assert raw.hex() not in text and "/etc/k" in text and k.key_id in text
    assert raw.hex()[:16] != k.key_id  # the id is a hash, not a prefix of the key


def test_wrong_key_and_moved_value() -> None:
    a, b = DataKey(os.urandom(32), "/a.key"), DataKey(os.urandom(32), "/b.key")
    token = a.seal(b"x", "/k1")
    with pytest.raises(WrongDataKey, match=r"/b\.key"):
        b.open(token, "/k1")
    with pytest.raises(WrongDataKey, match=r"/a\.key"):
        a.open(token, "/k2")
