"""The [node] section of cluster-node's TOML file: every mistake is one clear line."""

from __future__ import annotations

import pytest

from cluster.config import ConfigError, parse_config
from cluster.node.config import node_config

GOOD = """
[node]
id = "node-1"
vip = "203.0.113.10"
address = "10.30.0.11"
"""


def test_defaults_follow_docs_configuration() -> None:
    n = node_config(parse_config(GOOD, "n.toml")).node
    assert (n.capacity, n.tun, n.health_port, n.lease_ttl_s) == (100, "ipsc0", 4501, 3)
    assert (n.checkpoint_packets, n.checkpoint_ms, n.replay_window) == (1024, 200, 1024)
    assert n.jump_packets == 1024 * 1024
    assert n.address6 is None
    spelled = node_config(parse_config(GOOD + 'address6 = "FD00:30:0::11"\n', "n.toml")).node
    assert spelled.address6 == "fd00:30::11"


@pytest.mark.parametrize(("extra", "message"), [
    ('replay_window = 32', "replay_window must be 64..4096"),
    ('replay_window = "big"', "replay_window must be int"),
    ('keyd_address = "keyd"', "keyd_address is not an IP address"),
    ('checkpoint_packets = 0', "checkpoint_packets must be >= 1"),
    ('lease_ttl_s = 1', "lease_ttl_s must be >= 2"),
    ('tun = "a-very-long-tun-name"', "tun must be a 1..15 character"),
    ('address6 = "10.30.0.11"', "address6 must be an IPv6 address"),
    ('address6 = "node"', "address6 is not an IP address"),
])
def test_bad_values(extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        node_config(parse_config(GOOD + extra + "\n", "n.toml"))
    assert "n.toml" in str(e.value) and "\n" not in str(e.value)


def test_missing_id_and_overrides() -> None:
    with pytest.raises(ConfigError, match=r"\[node\] id is required"):
        node_config(parse_config("[node]\nvip = '203.0.113.10'\naddress = '10.0.0.1'\n"))
    n = node_config(parse_config(GOOD), {"id": "node-9", "tun": None}).node
    assert (n.id, n.tun) == ("node-9", "ipsc0")
