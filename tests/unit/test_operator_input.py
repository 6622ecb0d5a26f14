"""Operator-facing robustness: values no writer produces, read by everyone, are typed errors."""

from __future__ import annotations

import json

import pytest

from cluster.store.records import (
    Assignment,
    KeydRecord,
    MalformedRecord,
    NodeRecord,
    SeqRecord,
    decode_record,
)

NODE_KEY = "/ipsec-cluster/t/nodes/n1"


def _node(**over: object) -> bytes:
    body: dict[str, object] = {"v": 1, "id": "n1", "address": "10.0.0.1", "capacity": 5,
                               "state": "ready", "health_port": 4501, "version": "1",
                               "started_at": 1}
    body.update(over)
    return json.dumps(body).encode()


def _seq(**over: object) -> bytes:
    body: dict[str, object] = {"v": 1, "spi": 256, "owner": "n1", "epoch": 1, "out_seq": 10,
                               "in_highest": 5, "in_bitmap": 31, "kind": "checkpoint",
                               "written_at": 1.0}
    body.update(over)
    return json.dumps(body).encode()


@pytest.mark.parametrize("raw", [
    # a capacity float() cannot hold killed the sprayer and `clusterctl rebalance`
    _node(capacity=10 ** 400),
    _node(capacity=1 << 32),
    # json.loads reads NaN/Infinity, and 1e400 as inf; `-o json` then printed non-JSON
    b'{"v":1,"id":"n1","address":"10.0.0.1","capacity":5,"state":"ready",'
    b'"health_port":4501,"version":"1","started_at":NaN}',
    b'{"v":1,"id":"n1","address":"10.0.0.1","capacity":5,"state":"ready",'
    b'"health_port":4501,"version":"1","started_at":Infinity}',
    b'{"v":1,"id":"n1","address":"10.0.0.1","capacity":5,"state":"ready",'
    b'"health_port":4501,"version":"1","started_at":-1e400}',
    _node(started_at=10 ** 400),
])
def test_node_numbers_out_of_range_are_malformed(raw: bytes) -> None:
    with pytest.raises(MalformedRecord):
        decode_record(NodeRecord, raw, NODE_KEY)


def test_largest_capacity_still_reads_and_converts() -> None:
    record = decode_record(NodeRecord, _node(capacity=(1 << 32) - 1), NODE_KEY)
    assert float(record.capacity) == (1 << 32) - 1


def test_keyd_time_must_be_finite() -> None:
    raw = b'{"v":1,"id":"k1","address":"10.0.0.5","version":"1","started_at":Infinity}'
    with pytest.raises(MalformedRecord, match="finite"):
        decode_record(KeydRecord, raw, "/ipsec-cluster/t/keyd/k1")


@pytest.mark.parametrize("over", [
    {"out_seq": 1 << 64}, {"in_highest": 10 ** 30}, {"in_bitmap": 1 << 4096},
    {"epoch": 1 << 63}, {"packets_in": 1 << 64},
])
def test_seq_counters_out_of_range_are_malformed(over: dict[str, object]) -> None:
    with pytest.raises(MalformedRecord):
        decode_record(SeqRecord, _seq(**over), "/ipsec-cluster/t/seq/00000100")


def test_seq_counters_at_their_limits_read() -> None:
    record = decode_record(SeqRecord, _seq(out_seq=(1 << 64) - 1, in_bitmap=(1 << 4096) - 1),
                           "/ipsec-cluster/t/seq/00000100")
    assert record.out_seq == (1 << 64) - 1


def test_assignment_epoch_out_of_range_is_malformed() -> None:
    ike = "0123456789abcdef0123456789abcdef"
    raw = json.dumps({"v": 1, "ike_sa_id": ike, "node": "n1", "epoch": 10 ** 40,
                      "phase": "active", "previous_node": None, "updated_at": 1.0}).encode()
    with pytest.raises(MalformedRecord, match="epoch"):
        decode_record(Assignment, raw, f"/ipsec-cluster/t/assign/{ike}")


def default_sigint() -> None:
    """A child started with SIGINT at its default, whatever this test run inherited (a run
    started in the background, `cmd &`, has SIGINT ignored, and so would every child)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(("script", "module"), [
    ("clusterctl", "cluster.cli.main"), ("sprayer", "sprayer.main"),
    ("cluster-hooks", "cluster.hooks.main"),
])
def test_ctrl_c_while_a_console_script_starts_is_one_line_and_130(script: str,
                                                                   module: str) -> None:
    """SIGINT while the console script still imports its modules: no traceback."""
    import subprocess
    import sys

    code = (f"import sys; sys.argv[0] = '/usr/bin/{script}'\n"
            f"import {module}, os, signal, time\n"
            "os.kill(os.getpid(), signal.SIGINT)\n"
            "time.sleep(10)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False, preexec_fn=default_sigint)
    assert done.returncode == 130
    assert done.stderr == "interrupted\n"


def test_importing_the_cli_elsewhere_leaves_sigint_alone() -> None:
    import signal

    import cluster.cli  # noqa: F401
    from cluster.start import interrupted_while_starting

    assert signal.getsignal(signal.SIGINT) is not interrupted_while_starting


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "abc", "0.05", "1e9"])
def test_clusterctl_timeout_must_be_finite_seconds(value: str) -> None:
    """FloatRange(0.1) let nan and inf through; etcd then 'timed out' at once (exit 1)."""
    from click.testing import CliRunner

    from cluster.cli.main import cli

    result = CliRunner().invoke(cli, ["--timeout", value, "status"])
    assert result.exit_code == 2
    assert "--timeout" in result.output


def test_clusterctl_empty_endpoints_is_a_usage_error() -> None:
    """`--endpoints ""` used to fall back to the default endpoint silently."""
    from click.testing import CliRunner

    from cluster.cli.main import cli

    result = CliRunner().invoke(cli, ["--endpoints", "", "status"])
    assert result.exit_code == 2
    assert "--endpoints is empty" in result.output


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "+inf"])
def test_config_floats_must_be_finite(tmp_path: object, value: str) -> None:
    """TOML has nan and inf; a time-out or rate of either is a configuration error."""
    from pathlib import Path

    from cluster.config import ConfigError, load_config

    path = Path(str(tmp_path)) / "c.toml"
    path.write_text(f"[etcd]\ntimeout_s = {value}\n")
    with pytest.raises(ConfigError, match="finite"):
        load_config(path)


@pytest.mark.parametrize(("over", "why"), [
    ({"timeout_s": float("nan")}, "timeout_s must be a finite"),
    ({"backoff_s": float("inf")}, "backoff_s must be a finite"),
    ({"webhooks": ["notaurl"]}, "not an http"),
    ({"webhooks": ["ftp://hooks.example.net/x"]}, "not an http"),
    ({"webhooks": ["https:///nohost"]}, "not an http"),
])
def test_hooks_settings_refuse_what_no_flag_may_say(over: dict[str, object], why: str) -> None:
    """`cluster-hooks --timeout-s nan` or `--webhook notaurl` used to start and fail on every
    delivery."""
    from cluster.config import ConfigError
    from cluster.hooks.runner import HooksSettings

    with pytest.raises(ConfigError, match=why):
        HooksSettings(**over)  # type: ignore[arg-type]


def test_hooks_settings_take_http_and_https_webhooks() -> None:
    from cluster.hooks.runner import HooksSettings

    s = HooksSettings(webhooks=["http://127.0.0.1:8080/h", "https://hooks.example.net/ipsec"])
    assert len(s.webhooks) == 2


SPRAYER_TOML = ('[sprayer]\nid = "{id}"\nvip = "203.0.113.10"\nkeyd = ["10.30.0.5"]\n'
                '[metrics]\nlisten = ""\n')


@pytest.mark.parametrize("bad", ["../x", "", "a b", "x/y"])
def test_sprayer_id_is_a_name_in_the_file(tmp_path: object, bad: str) -> None:
    from pathlib import Path

    from cluster.config import ConfigError, load_config
    from sprayer.settings import settings_from

    path = Path(str(tmp_path)) / "sprayer.toml"
    path.write_text(SPRAYER_TOML.format(id=bad))
    with pytest.raises(ConfigError, match="id: bad name"):
        settings_from(load_config(path))


@pytest.mark.parametrize("bad", ["../x", "", "a b"])
def test_sprayer_id_flag_is_checked_too(tmp_path: object, bad: str) -> None:
    """`--id` replaced the checked settings unchecked: `--id ../x` started a sprayer."""
    from pathlib import Path

    from click.testing import CliRunner

    from sprayer.main import main

    path = Path(str(tmp_path)) / "sprayer.toml"
    path.write_text(SPRAYER_TOML.format(id="sprayer-1"))
    result = CliRunner().invoke(main, ["--config", str(path), "--id", bad])
    assert result.exit_code == 2
    assert "flags: id: bad name" in result.output


@pytest.mark.parametrize("bad", ["../../etc", "UPPER", "x" * 21])
def test_clusterctl_bad_lab_name_is_a_usage_error(bad: str) -> None:
    """It was exit 1 with the nested message of a `lab status` subprocess."""
    from click.testing import CliRunner

    from cluster.cli.main import cli

    result = CliRunner().invoke(cli, ["--lab", bad, "status"])
    assert result.exit_code == 2
    assert "Invalid value for '--lab': bad lab name" in result.output


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_sprayer_map_check_interval_must_be_a_finite_non_negative_number(
        tmp_path: object, value: str) -> None:
    from pathlib import Path

    from cluster.config import ConfigError, load_config
    from sprayer.settings import settings_from

    path = Path(str(tmp_path)) / "sprayer.toml"
    path.write_text(SPRAYER_TOML.format(id="sprayer-1").replace(
        "[metrics]", f"map_check_interval_s = {value}\n[metrics]"))
    with pytest.raises(ConfigError, match=r"map_check_interval_s must be (>= 0|a finite)"):
        settings_from(load_config(path))
