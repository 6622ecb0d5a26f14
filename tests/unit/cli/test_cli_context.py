"""Where clusterctl connects: options, environment, --config and --lab, in that order."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from cluster.cli.context import CliFailure, Settings, from_lab_status, resolve


def test_defaults() -> None:
    conn = resolve(Settings())
    assert (conn.endpoints, conn.cluster, conn.prefix, conn.timeout_s) == (
        ["http://127.0.0.1:2379"], "default", "/ipsec-cluster", 2.0)


def test_flags_beat_config(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[cluster]\nname = "prod"\nprefix = "/vpn"\n[etcd]\n'
                   'endpoints = ["https://10.10.0.11:2379", "https://10.10.0.12:2379"]\n'
                   'timeout_s = 5.0\n')
    conn = resolve(Settings({"config": str(cfg)}))
    assert conn.endpoints == ["https://10.10.0.11:2379", "https://10.10.0.12:2379"]
    assert (conn.cluster, conn.prefix, conn.timeout_s) == ("prod", "/vpn", 5.0)
    conn = resolve(Settings({"config": str(cfg), "endpoints": "http://a:1, http://b:2",
                             "cluster": "other"}))
    assert conn.endpoints == ["http://a:1", "http://b:2"] and conn.cluster == "other"
    assert conn.prefix == "/vpn"


def test_bad_config_and_usage() -> None:
    with pytest.raises(CliFailure, match="cannot read config"):
        resolve(Settings({"config": "/nonexistent/c.toml"}))
    with pytest.raises(click.UsageError, match="go together"):
        resolve(Settings({"cert": "/tmp/c.pem"}))
    with pytest.raises(click.UsageError, match="empty"):
        resolve(Settings({"endpoints": " , "}))


def test_lab_status_fields() -> None:
    status = {"etcd_endpoints": ["http://127.0.0.1:50051"], "cluster": "lab",
              "prefix": "ipsc-lab_1234-", "key_prefix": "/ipsec-cluster/lab/"}
    assert from_lab_status(status) == {"endpoints": ["http://127.0.0.1:50051"],
                                       "cluster": "lab", "prefix": "/ipsec-cluster"}
    assert from_lab_status({"etcd_endpoints": "http://x:1"}) == {"endpoints": ["http://x:1"]}
