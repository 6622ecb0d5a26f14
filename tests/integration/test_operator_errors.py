"""Operator-facing robustness against a real etcd: signals, dead etcd, junk in the keyspace."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from cluster.store.client import Store
from cluster.store.keyspace import Keyspace
from cluster.store.records import ChildSaRecord
from cluster.store.seal import DataKey, WrongDataKey

CLUSTERCTL = str(Path(sys.executable).with_name("clusterctl"))


def _env(endpoint: str, cluster: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(CLUSTERCTL_ENDPOINTS=endpoint, CLUSTERCTL_CLUSTER=cluster)
    return env


def _wait_stderr(proc: subprocess.Popen[str], needle: str, timeout_s: float) -> str:
    assert proc.stderr is not None
    seen = ""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
        if needle in line:
            return seen
    raise AssertionError(f"{needle!r} not on stderr: {seen!r}")


def default_sigint() -> None:
    """SIGINT at its default in the child, whatever this run inherited (a run started in the
    background, `cmd &`, has SIGINT ignored, and so would every child)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(("sig", "code", "line"), [
    (signal.SIGINT, 130, "interrupted"),
    (signal.SIGTERM, 143, "terminated"),
])
def test_a_signal_ends_watch_with_its_code_and_one_line(
        etcd_endpoint: str, sig: signal.Signals, code: int, line: str) -> None:
    """`clusterctl watch` runs until interrupted: Ctrl-C (or SIGTERM) is its normal end, exit
    128 + the signal, one line; click used to print "Aborted!" and exit 1 as if it had failed."""
    env = _env(etcd_endpoint, "w" + uuid.uuid4().hex[:8])
    proc = subprocess.Popen([CLUSTERCTL, "watch"], env=env, preexec_fn=default_sigint,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_stderr(proc, "watching", 60)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code
    assert err.strip() == line


def _sealed_child(spi: int) -> ChildSaRecord:
    return ChildSaRecord(spi, spi + 1, "00" * 16, "aes128gcm16", None, False, b"k" * 20, b"",
                         b"o" * 20, b"", ["10.20.0.0/16"], ["10.99.0.1/32"], "192.0.2.1", 4500,
                         True, "10.99.0.1", "a@example.net", time.time(), 3000, 3600)


def test_check_data_key_refuses_a_key_that_opens_nothing(etcd_endpoint: str) -> None:
    right_bytes = os.urandom(32)
    right = DataKey(right_bytes, "/etc/ipsec-cluster/data.key")
    wrong = DataKey(os.urandom(32), "/tmp/not-the-cluster.key")
    ks = Keyspace("k" + uuid.uuid4().hex[:8])
    with Store([etcd_endpoint], ks, right) as store:
        store.check_data_key(wrong)               # nothing sealed yet: nothing to refuse
        store.put(_sealed_child(0x1000))
        store.check_data_key(right)
        with pytest.raises(WrongDataKey, match=r"/tmp/not-the-cluster\.key.*1 sealed value"):
            store.check_data_key(wrong)
        # mid-rotation: the new key current, the old one retired, opens what is stored
        rotated = DataKey(os.urandom(32), "/etc/ipsec-cluster/data.key",
                          retired=[right_bytes])
        store.check_data_key(rotated)


def test_sprayer_with_a_wrong_data_key_exits_2_naming_the_file(etcd_endpoint: str,
                                                               tmp_path: Path) -> None:
    """It used to start and skip every SA (a warning each): no client's ESP was steered."""
    cluster = "s" + uuid.uuid4().hex[:8]
    with Store([etcd_endpoint], Keyspace(cluster), DataKey(os.urandom(32), "right")) as store:
        store.put(_sealed_child(0x2000))
    key_file = tmp_path / "wrong.key"
    key_file.write_text(os.urandom(32).hex() + "\n")
    key_file.chmod(0o600)
    config = tmp_path / "sprayer.toml"
    config.write_text(
        f'[cluster]\nname = "{cluster}"\ndata_key_file = "{key_file}"\n'
        f'[etcd]\nendpoints = ["{etcd_endpoint}"]\n[metrics]\nlisten = ""\n'
        '[sprayer]\nid = "sprayer-t"\nvip = "203.0.113.10"\ndriver = "haproxy"\n'
        'keyd = ["10.30.0.5"]\nhaproxy_socket = "/nonexistent/haproxy.sock"\n')
    done = subprocess.run([str(Path(sys.executable).with_name("sprayer")), "--config",
                           str(config)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 2, done.stderr
    assert str(key_file) in done.stderr
    assert "opens none of the 1 sealed value" in done.stderr
    assert "Traceback" not in done.stderr


def test_node_remove_clears_a_malformed_node_record(etcd_endpoint: str) -> None:
    """Every reader skips junk under nodes/, and `node remove` refused it ("malformed
    record"): the operator had no way to clear it but etcdctl."""
    from click.testing import CliRunner

    from cluster.cli.main import cli

    cluster = "r" + uuid.uuid4().hex[:8]
    ks = Keyspace(cluster)
    with Store([etcd_endpoint], ks) as store:
        store.raw_put(ks.node("junk"), b"not json")
        store.raw_put(ks.node("nan"), b'{"v":1,"id":"nan","address":"10.0.0.1","capacity":1,'
                                      b'"state":"ready","health_port":1,"version":"x",'
                                      b'"started_at":NaN}')
        args = ["--endpoints", etcd_endpoint, "--cluster", cluster, "node", "remove"]
        result = CliRunner().invoke(cli, [*args, "junk"])
        assert result.exit_code == 0, result.output
        assert "removed (its record was malformed: not JSON)" in result.output
        assert store.raw_get(ks.node("junk")) is None
        result = CliRunner().invoke(cli, [*args, "nan", "-o", "json"])
        assert result.exit_code == 0, result.output
        assert '"malformed": "started_at: not a finite number"' in result.output
        assert store.raw_get(ks.node("nan")) is None
        result = CliRunner().invoke(cli, [*args, "junk"])
        assert result.exit_code == 1
        assert "no node 'junk' is registered" in result.output


def test_hooks_with_a_saved_revision_etcd_never_reached_exit_1(etcd_endpoint: str,
                                                                tmp_path: Path) -> None:
    """A revision file from before etcd was restored or replaced: cluster-hooks used to retry
    for ever ("in the future") and would have resumed, some day, at an unrelated change."""
    hooks = tmp_path / "hooks.d"
    hooks.mkdir()
    state = tmp_path / "hooks.revision"
    state.write_text("99999999999\n")
    config = tmp_path / "hooks.toml"
    config.write_text(f'[cluster]\nname = "h{uuid.uuid4().hex[:8]}"\n'
                      f'[etcd]\nendpoints = ["{etcd_endpoint}"]\n[metrics]\nlisten = ""\n'
                      f'[hooks]\ndirectory = "{hooks}"\nstate_file = "{state}"\n')
    done = subprocess.run([str(Path(sys.executable).with_name("cluster-hooks")), "--config",
                           str(config)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 1, done.stderr
    assert f"revision file {state} holds 99999999999" in done.stderr
    assert "remove the file to start from now" in done.stderr
    assert state.read_text() == "99999999999\n"      # nothing overwritten


def test_rebalance_when_etcd_dies_part_way_says_what_was_written(tmp_path: Path) -> None:
    """etcd gone between the read and the writes: the moves come back with what became of
    each (unknown for the write that failed, not written after it), not only an error."""
    from cluster.cli.ops import RebalanceInterrupted, rebalance
    from cluster.cli.view import read_snapshot
    from cluster.procs import EtcdServer
    from cluster.store.keyspace import ike_sa_id
    from cluster.store.records import Assignment, IkeSaRecord, NodeRecord

    etcd = EtcdServer(tmp_path / "etcd")
    etcd.start()
    try:
        store = Store([etcd.endpoint], Keyspace("reb"), DataKey(os.urandom(32), "k"),
                      timeout_s=1.0)
        now = time.time()
        store.put(NodeRecord("node-1", "10.30.0.11", 100, "draining", 4501, "0.1.0", now))
        store.put(NodeRecord("node-2", "10.30.0.12", 100, "ready", 4501, "0.1.0", now))
        for n in (1, 2, 3):
            ike_id = ike_sa_id(0x1000 + n, 0x2000 + n)
            store.put(IkeSaRecord(ike_id, 0x1000 + n, 0x2000 + n, "198.51.100.10", 4500, 4500,
                                  f"c{n}@example.net", f"10.99.0.{n}", [], "keyd-1", now,
                                  b"state"))
            store.put(Assignment(ike_id, "node-1", 1, "active", None, now))
        snap = read_snapshot(store)
        etcd.stop()
        with pytest.raises(RebalanceInterrupted, match="stopped after 0 of 3") as exc:
            rebalance(store, snap, dry_run=False)
        results = [m.result for m in exc.value.moves]
        assert results == ["unknown", "not written", "not written"]
        assert all(m.to_node == "node-2" for m in exc.value.moves)
        store.close()
    finally:
        etcd.stop()


def test_client_certificate_over_plain_http_is_refused(etcd_endpoint: str,
                                                       tmp_path: Path) -> None:
    """`--cert/--key` with an http:// endpoint and no CA were silently unused: the operator
    thought etcd saw their certificate."""
    from click.testing import CliRunner

    from cluster.cli.main import cli

    cert = tmp_path / "c.pem"
    cert.write_text("x")
    result = CliRunner().invoke(cli, ["--endpoints", etcd_endpoint, "--cert", str(cert),
                                      "--key", str(cert), "status"])
    assert result.exit_code == 1
    assert "a client certificate needs TLS" in result.output
