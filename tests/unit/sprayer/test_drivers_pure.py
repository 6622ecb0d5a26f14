"""The pure parts of the drivers and the daemon's configuration and command line."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cluster.config import ConfigError, parse_config
from cluster.host import DriverError
from sprayer.backends import MARK_BASE, MARK_MASK, Backend, MarkAllocator
from sprayer.haproxy import scale_weights
from sprayer.main import main
from sprayer.nft import chain_rules
from sprayer.settings import settings_from
from sprayer.userspace import Steering, push_udp_ip, steer


def test_marks_are_stable_distinct_and_ours() -> None:
    a, b = MarkAllocator(), MarkAllocator()
    names = [f"node-{i}" for i in range(300)]
    ma = [a.mark(n) for n in names]
    assert len(set(ma)) == len(names)
    assert all(m & MARK_MASK == MARK_BASE and m & 0xFFFF not in (0, 253, 254, 255) for m in ma)
    assert [b.mark(n) for n in names] == ma   # another sprayer derives the same marks
    assert a.mark("node-7") == ma[7]
    a.forget(["node-7"])
    assert a.known() == {"node-7": ma[7]}


def test_backend_needs_an_ipv4_address() -> None:
    with pytest.raises(DriverError):
        Backend("n", "not-an-ip")


def test_chain_rules() -> None:
    rules = chain_rules("203.0.113.10", [0x49500001], [0x49500002, 0x49500003])
    assert rules[0] == "ip daddr 203.0.113.10 udp dport 500 meta mark set 0x49500001 accept"
    assert "@th,64,32 0 meta mark set 0x49500001" in rules[1]
    assert "meta mark set @th,64,32 map @spi_mark" in rules[2]
    assert "jhash ip saddr . udp sport mod 2" in rules[3]
    assert len(chain_rules("203.0.113.10", [1], [])) == 3   # no node: unknown SPIs dropped
    with pytest.raises(DriverError):
        chain_rules("203.0.113.10", [], [1])


def test_userspace_steering_matches_the_nft_rules() -> None:
    st = Steering(keyd=[1], spis={0x1234: 7}, fallback=[8, 9])
    c = ("198.51.100.2", 4500)
    assert steer(st, 500, b"\x00" * 30, c) == 1
    assert steer(st, 4500, b"\x00\x00\x00\x00" + b"x" * 30, c) == 1
    assert steer(st, 4500, b"\xff", c) == 1   # NAT keepalive
    assert steer(st, 4500, b"\x00\x00\x12\x34" + b"x" * 30, c) == 7
    assert steer(st, 4500, b"\x00\x00\x99\x99" + b"x" * 30, c) in (8, 9)
    assert steer(Steering(), 4500, b"\x00\x00\x99\x99" + b"x" * 30, c) is None
    pkt = push_udp_ip(c, ("203.0.113.10", 4500), b"abc")
    assert len(pkt) == 20 + 8 + 3 and pkt[9] == 17 and pkt[-3:] == b"abc"


def test_haproxy_weights_scale_into_range() -> None:
    assert scale_weights({"a": 100, "b": 50}) == {"a": 100, "b": 50}
    assert scale_weights({"a": 1000, "b": 1, "c": 0}) == {"a": 256, "b": 1, "c": 0}


def test_settings_validation() -> None:
    ok = parse_config('[sprayer]\nkeyd = ["10.30.0.5"]\n')
    assert settings_from(ok).probe_interval_ms == 100
    assert (settings_from(ok).hold_down_ms, settings_from(ok).max_hold_down_ms) == (1000, 30000)
    tuned = parse_config('[sprayer]\nkeyd = ["10.30.0.5"]\nhold_down_ms = 200\n'
                         'max_hold_down_ms = 400\n')
    assert (settings_from(tuned).hold_down_ms, settings_from(tuned).max_hold_down_ms) == (200, 400)
    for bad in ('[sprayer]\nkeyd = ["10.30.0.5"]\ndriver = "magic"\n',
                '[sprayer]\nkeyd = ["nope"]\n',
                '[sprayer]\nkeyd = []\n',
                '[sprayer]\nkeyd = ["10.30.0.5"]\nprobe_misses = 0\n',
                '[sprayer]\nkeyd = ["10.30.0.5"]\nhold_down_ms = -1\n',
                '[sprayer]\nkeyd = ["10.30.0.5"]\nhold_down_ms = 5000\nmax_hold_down_ms = 10\n',
                '[sprayer]\nkeyd = ["10.30.0.5"]\nlease_ttl_s = "3"\n'):
        with pytest.raises(ConfigError):
            settings_from(parse_config(bad))


def test_cli_errors_are_one_line_exit_2(tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(main, ["--config", str(tmp_path / "missing.toml")])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "cannot read config" in r.output
    bad = tmp_path / "bad.toml"
    bad.write_text('[sprayer]\nkeyd = ["10.30.0.5"]\ndriver = "magic"\n')
    r = runner.invoke(main, ["--config", str(bad)])
    assert r.exit_code == 2 and "driver" in r.output
    r = runner.invoke(main, ["--driver", "bogus"])
    assert r.exit_code == 2
    good = tmp_path / "good.toml"
    good.write_text(f'[cluster]\ndata_key_file = "{tmp_path}/no.key"\n'
                    '[sprayer]\nkeyd = ["10.30.0.5"]\n')
    r = runner.invoke(main, ["--config", str(good)], env={"IPSEC_CLUSTER_DATA_KEY": ""})
    assert r.exit_code == 2 and "Traceback" not in r.output and r.output.count("\n") == 1


def test_netlink_route_messages_and_acks() -> None:
    import struct

    from cluster.netlink import NLMSG_ERROR, RTM_DELROUTE, RTM_NEWROUTE, pull_acks, push_route

    new = push_route(7, False, "10.99.0.1", "10.30.0.11", 254, 149)
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", new)
    assert (length, kind, seq) == (len(new), RTM_NEWROUTE, 7) and flags & 0x100  # REPLACE
    assert new[16:18] == bytes([2, 32]) and new[21] == 149       # AF_INET, /32, protocol
    assert bytes([10, 99, 0, 1]) in new and bytes([10, 30, 0, 11]) in new
    gone = push_route(8, True, "10.99.0.1", None, 1000, 149)
    assert struct.unpack_from("=H", gone, 4)[0] == RTM_DELROUTE and gone[20] == 0  # table attr
    ack = struct.pack("=IHHII", 36, NLMSG_ERROR, 0, 7, 0) + struct.pack("=i", 0) + new[:16]
    err = struct.pack("=IHHII", 36, NLMSG_ERROR, 0, 8, 0) + struct.pack("=i", -3) + gone[:16]
    assert pull_acks(ack + err) == [(7, 0), (8, 3)]
    with pytest.raises(DriverError):
        pull_acks(struct.pack("=IHHII", 99, NLMSG_ERROR, 0, 1, 0))
