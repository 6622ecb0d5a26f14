"""The lab's pure parts: swanctl output parsing, the demo's gap arithmetic, rendered
configuration and state files. No namespaces needed."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from cluster.lab import daemons, demo, strongswan
from cluster.lab.errors import LabError
from cluster.lab.state import LabState, check_name

# `swanctl --list-sas` of a lab client (strongSwan 5.9.8) right after a MOBIKE-induced rekey:
# the first Child SA is DELETED, the second INSTALLED.
LIST_SAS = """\
lab: #1, ESTABLISHED, IKEv2, 31ba6bd76451216d_i* b85f98085588873b_r
  local  'alice.clients.lab.example' @ 192.0.2.100[4500] [10.99.0.1]
  remote 'vpn.lab.example' @ 203.0.113.10[4500]
  AES_GCM_16-128/PRF_HMAC_SHA2_256/CURVE_25519
  established 3s ago, rekeying in 14120s
  lab: #1, reqid 1, DELETED, TUNNEL-in-UDP, ESP:AES_GCM_16-128
    installed 3s ago, rekeying in 3530s, expires in 3957s
    in  92a15d64,      0 bytes,     0 packets
    out 23f8d384,      0 bytes,     0 packets
    local  10.99.0.1/32
    remote 10.20.0.0/24
  lab: #2, reqid 1, INSTALLED, TUNNEL-in-UDP, ESP:AES_GCM_16-128
    installed 2s ago, rekeying in 3338s, expires in 3958s
    in  633f8fd2,    252 bytes,     3 packets,     0s ago
    out 07b9ca54,    252 bytes,     3 packets,     0s ago
    local  10.99.0.1/32
    remote 10.20.0.0/24
other: #2, CONNECTING, IKEv2, 0011223344556677_i* 0000000000000000_r
  local  '192.0.2.101' @ 192.0.2.101[500]
  remote '%any' @ 203.0.113.10[500]
"""


def test_parse_sas() -> None:
    first, second = strongswan.parse_sas(LIST_SAS)
    assert (first.name, first.uniqueid, first.state) == ("lab", 1, "ESTABLISHED")
    assert (first.spi_i, first.spi_r) == ("31ba6bd76451216d", "b85f98085588873b")
    assert first.local == "192.0.2.100[4500]" and first.remote == "203.0.113.10[4500]"
    assert first.virtual_ip == "10.99.0.1"
    assert first.child_spis == (("633f8fd2", "07b9ca54"),)     # installed ones only
    assert (second.state, second.virtual_ip, second.child_spis) == ("CONNECTING", None, ())
    assert strongswan.parse_sas("") == []


def test_gap_after() -> None:
    answers = [(10.0 + i * 0.1, i + 1) for i in range(10)]            # seq 1..10 up to 10.9
    answers += [(12.0 + i * 0.1, 21 + i) for i in range(10)]          # seq 21..30 from 12.0
    gap, lost = demo.gap_after(answers, since=10.5, until=13.0)
    assert gap == pytest.approx(12.0 - 10.9)
    assert lost == 10                                                  # seq 11..20
    assert demo.gap_after([], since=1.0, until=2.0) == (1.0, 10)
    gap, lost = demo.gap_after(answers[:10], since=10.05, until=10.95)
    assert lost == 0 and gap == pytest.approx(0.1)


def test_ping_log_parsing(tmp_path: Path) -> None:
    log = tmp_path / "ping.log"
    log.write_text("PING 10.20.0.10 (10.20.0.10) 56(84) bytes of data.\n"
                   "[1700000000.100000] 64 bytes from 10.20.0.10: icmp_seq=1 ttl=62 time=0.5 ms\n"
                   "[1700000000.200000] no answer yet for icmp_seq=2\n"
                   "[1700000000.300000] 64 bytes from 10.20.0.10: icmp_seq=3 ttl=62 time=0.5 ms\n")
    assert demo.replies(log) == [(1700000000.1, 1), (1700000000.3, 3)]


def test_rendered_daemon_configs_are_the_documented_toml(tmp_path: Path) -> None:
    common = daemons.Common("lab1", tmp_path / "data.key", tmp_path)
    keyd = tomllib.loads(daemons.keyd_config(common, 1, tmp_path / "psk", tmp_path / "g.pem",
                                             tmp_path / "g-key.pem", tmp_path / "ca.pem"))
    assert keyd["cluster"] == {"name": "lab1", "prefix": "/ipsec-cluster",
                               "data_key_file": str(tmp_path / "data.key")}
    assert keyd["etcd"]["endpoints"] == ["http://10.30.0.2:2379"]
    assert keyd["keyd"]["vip"] == "203.0.113.10" and keyd["keyd"]["address"] == "10.30.0.5"
    node = tomllib.loads(daemons.node_config(common, 3))
    assert node["node"]["address"] == "10.30.0.13" and node["node"]["id"] == "node-3"
    sprayer = tomllib.loads(daemons.sprayer_config(common, 2))
    assert sprayer["sprayer"]["keyd"] == ["10.30.0.5", "10.30.0.6"]
    assert tomllib.loads(daemons.toml({"s": {"q": 'a"b\\c', "b": True, "l": []}}))["s"] == \
        {"q": 'a"b\\c', "b": True, "l": []}


def test_client_config_quotes_the_psk(tmp_path: Path) -> None:
    conf = strongswan.client_swanctl_conf(strongswan.ClientConfig(
        identity="x.clients.lab.example", auth="psk", psk='we"ird\\', ca_cert=tmp_path / "ca"))
    assert 'secret = "we\\"ird\\\\"' in conf
    assert "remote_addrs = 203.0.113.10" in conf and "vips = 0.0.0.0" in conf
    assert "encap = yes" in conf and "remote_ts = 10.20.0.0/24" in conf


def test_names_and_state_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for bad in ("", "A", "a_b", "-a", "a" * 21, "a/b"):
        with pytest.raises(LabError):
            check_name(bad)
    assert check_name("lab-2") == "lab-2"
    monkeypatch.setenv("IPSEC_CLUSTER_LAB_ROOT", str(tmp_path))
    with pytest.raises(LabError, match="no lab named"):
        LabState.load("nope")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "state.json").write_text("{not json")
    with pytest.raises(LabError, match="unreadable"):
        LabState.load("junk")
    (tmp_path / "junk" / "state.json").write_text(json.dumps({"name": "junk"}))
    with pytest.raises(LabError, match="malformed"):
        LabState.load("junk")
    state = LabState(name="ok", prefix="ipsc-ok_0000-", directory=str(tmp_path / "ok"),
                     gateway="cluster", nodes=1, keyd=1)
    (tmp_path / "ok").mkdir()
    state.save()
    assert LabState.load("ok") == state
