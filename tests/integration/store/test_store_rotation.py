"""Rotating the cluster data key on a real etcd: the ring reads old and new values, reseal
moves every sealed value to the current key, and the operator's command does it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cluster.store import (
    ChildSaRecord,
    DataKey,
    IkeSaRecord,
    Keyspace,
    Store,
    WrongDataKey,
)

Factory = Callable[..., Any]


def test_ring_reads_both_and_reseal_moves_everything(
        etcd_endpoint: str, keyspace: Keyspace, child_sa: Factory, ike_sa: Factory) -> None:
    old, new = os.urandom(32), os.urandom(32)
    old_only, new_only = DataKey(old, "old"), DataKey(new, "new")
    with Store([etcd_endpoint], keyspace, old_only) as before, \
            Store([etcd_endpoint], keyspace, DataKey(new, "ring", [old])) as ring, \
            Store([etcd_endpoint], keyspace, new_only) as after:
        lease = before.grant_lease(300)
        sa, ike = child_sa(0xA1000001), ike_sa()
        before.put(sa, lease=lease)
        before.put(ike)
        fresh = child_sa(0xA1000002)
        ring.put(fresh)                                       # sealed under the new key
        assert ring.get(ChildSaRecord, 0xA1000001).record == sa   # type: ignore[union-attr]
        assert ring.get(ChildSaRecord, 0xA1000002).record == fresh  # type: ignore[union-attr]
        with pytest.raises(WrongDataKey):
            before.get(ChildSaRecord, 0xA1000002)
        assert ring.sealed_key_ids() == {old_only.key_id: 2, new_only.key_id: 1}

        report = ring.reseal()
        assert (report.resealed, report.current, report.failed) == (2, 1, {})
        assert ring.sealed_key_ids() == {new_only.key_id: 3}
        got = after.get(ChildSaRecord, 0xA1000001)           # the new key alone reads all
        assert got is not None and got.record == sa and got.lease_id == lease
        assert after.get(IkeSaRecord, ike.ike_sa_id).record == ike  # type: ignore[union-attr]
        assert ring.reseal().resealed == 0                    # nothing left to do


def test_reseal_reports_what_no_key_opens(etcd_endpoint: str, keyspace: Keyspace,
                                          child_sa: Factory) -> None:
    with Store([etcd_endpoint], keyspace, DataKey(os.urandom(32), "lost")) as lost, \
            Store([etcd_endpoint], keyspace, DataKey(os.urandom(32), "ring")) as ring:
        lost.put(child_sa(0xA2000001))
        raw = ring.raw_get(ring.keyspace.sa(0xA2000001))
        report = ring.reseal()
        assert report.resealed == 0 and list(report.failed) == [ring.keyspace.sa(0xA2000001)]
        assert "was sealed under data key" in report.failed[ring.keyspace.sa(0xA2000001)]
        assert ring.raw_get(ring.keyspace.sa(0xA2000001)) == raw  # untouched


def rotate(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cluster.store.rotate", "--config",
                           str(config), *args], capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items()
                               if k != "IPSEC_CLUSTER_DATA_KEY"})


def test_rotate_command(tmp_path: Path, etcd_endpoint: str, keyspace: Keyspace,
                        child_sa: Factory) -> None:
    old, new = os.urandom(32), os.urandom(32)
    with Store([etcd_endpoint], keyspace, DataKey(old, "old")) as before:
        before.put(child_sa(0xA3000001))
    key_file = tmp_path / "data.key"
    key_file.write_text(f"{new.hex()}\n{old.hex()}\n")
    key_file.chmod(0o600)
    config = tmp_path / "keyd.toml"
    config.write_text(f'[cluster]\nname = "{keyspace.cluster}"\n'
                      f'data_key_file = "{key_file}"\n'
                      f'[etcd]\nendpoints = ["{etcd_endpoint}"]\n')
    check = rotate(config, "--check")
    assert check.returncode == 1 and "retired" in check.stdout, check.stderr
    done = rotate(config)
    assert done.returncode == 0, done.stderr
    assert "re-sealed 1" in done.stdout
    again = rotate(config, "--check")
    assert again.returncode == 0 and "retired" not in again.stdout
    # bad input: one line on stderr, no traceback
    key_file.write_text("not a key\n")
    bad = rotate(config)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("error: data key from")
    missing = rotate(tmp_path / "nope.toml")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
