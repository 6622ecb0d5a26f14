"""clusterctl policy set|list|show|remove against a real etcd: both formats, exit codes."""

from __future__ import annotations

import dataclasses
import json

import pytest
from cli_records import Cluster
from click.testing import CliRunner

from cluster.cli.main import cli
from cluster.store import Policy


def run(*argv: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, list(argv), catch_exceptions=False)


def test_set_show_list_remove(cluster: Cluster) -> None:
    made = run(*cluster.args("policy", "set", "guest", "--mode", "guest",
                             "--allow", "10.20.0.53 udp/53", "--allow", "TCP/443",
                             "--deny", "198.51.100.0/24", "--identity", "*@guest.example.org",
                             "-o", "json"))
    assert made.exit_code == 0, made.output
    doc = json.loads(made.stdout)
    assert doc["created"] is True and doc["bound_sas"] == 0
    assert doc["allowed"] == ["10.20.0.53/32 udp/53", "tcp/443"]  # canonical rule texts
    stored = cluster.store.get(Policy, "guest")
    assert stored is not None and stored.record.mode == "guest"
    assert stored.record.identities == ["*@guest.example.org"]

    shown = run(*cluster.args("policy", "show", "guest"))
    assert shown.exit_code == 0 and "10.20.0.53/32 udp/53" in shown.stdout
    replaced = run(*cluster.args("policy", "set", "guest", "--mode", "split"))
    assert replaced.exit_code == 0 and "replaced" in replaced.stdout

    # a Child SA bound to it: remove is refused without --force
    child = cluster.child[0]
    cluster.store.put(dataclasses.replace(child, policy="guest", policy_mode="split"))
    listed = json.loads(run(*cluster.args("policy", "list", "-o", "json")).stdout)
    assert [(r["name"], r["mode"], r["bound_sas"]) for r in listed] == [("guest", "split", 1)]
    assert "guest" in run(*cluster.args("policy", "list")).stdout
    refused = run(*cluster.args("policy", "remove", "guest"))
    assert refused.exit_code == 1 and "bound to 1 Child SA" in refused.stderr
    assert cluster.store.get(Policy, "guest") is not None
    forced = run(*cluster.args("policy", "remove", "guest", "--force", "-o", "json"))
    assert forced.exit_code == 0 and json.loads(forced.stdout)["removed"] is True
    assert cluster.store.get(Policy, "guest") is None
    assert run(*cluster.args("policy", "remove", "guest", "--force")).exit_code == 1
    missing = run(*cluster.args("policy", "show", "guest"))
    assert missing.exit_code == 1 and missing.stderr.strip() == "error: no policy guest"


def test_malformed_policy_is_listed_as_such(cluster: Cluster) -> None:
    cluster.store.raw_put(cluster.store.keyspace.policy("broken"), b'{"v": 1}')
    rows = json.loads(run(*cluster.args("policy", "list", "-o", "json")).stdout)
    assert rows[0]["name"] == "broken" and "malformed" in rows[0]
    assert "MALFORMED" in run(*cluster.args("policy", "list")).stdout


@pytest.mark.parametrize("argv", [
    ["policy", "set", "p"],
    ["policy", "set", "p", "--mode", "open"],
    ["policy", "set", "p", "--mode", "split", "--allow", "10.0.0.0/33"],
    ["policy", "set", "p", "--mode", "split", "--deny", "icmp/8"],
    ["policy", "set", "p", "--mode", "split", "--allow", "tcp/80 10.0.0.0/8"],
    ["policy", "set", "bad/name", "--mode", "full"],
    ["policy", "show", "bad/name"],
    ["policy", "remove"],
    ["policy"],
], ids=lambda a: " ".join(a))
def test_bad_arguments_are_one_line_and_exit_2(cluster: Cluster, argv: list[str]) -> None:
    result = run(*cluster.args(*argv))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert cluster.store.get(Policy, "p") is None
