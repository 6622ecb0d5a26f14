"""The `[node]` section of the node agent's TOML file (docs/configuration.md).

Every problem is a `ConfigError` with a one-line message naming the file and the key.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cluster.config import Config, ConfigError, load_config
from cluster.esp import MAX_WINDOW, MIN_WINDOW

DEFAULT_PATH = Path("/etc/ipsec-cluster/cluster-node.toml")
DATAPLANES = ("auto", "kernel", "userspace")


@dataclass(frozen=True, slots=True)
class NodeSection:
    id: str
    vip: str
    address: str
    capacity: int = 100
    tun: str = "ipsc0"
    health_port: int = 4501
    lease_ttl_s: int = 3
    checkpoint_packets: int = 1024  # D
    checkpoint_ms: int = 200  # T
    replay_window: int = 1024
    keyd_address: str | None = None
    natt_port: int = 4500  # the data plane's UDP port on the VIP (RFC 3948)
    ike_port: int = 500  # stray IKE on the VIP is relayed from here
    tun_mtu: int = 1400
    fence_grace_ms: int = 1000  # see docs/node.md, "Fencing"
    ready_wait_ms: int = 500  # an old owner's wait for READY before its final record
    # back-end IPv6 address (the router sends return traffic for clients' IPv6 virtual
    # addresses here); None: inner IPv6 is not routed back to this node
    address6: str | None = None
    #: who carries the ESP: "userspace" (UDP socket, cluster.esp, TUN), "kernel" (Linux XFRM),
    #: "auto" (the kernel when an XFRM ESP state can be installed; docs/node.md)
    dataplane: str = "userspace"

    @property
    def jump_packets(self) -> int:
        """How far a new owner starts beyond a checkpoint (docs/node.md, "Counters")."""
        return jump_for(self.checkpoint_packets)


def jump_for(checkpoint_packets: int) -> int:
    """The jump J: an owner never sends more than J - 1 packets past its last checkpoint that
    etcd acknowledged (the data path enforces it), so a new owner starting at that checkpoint
    + J can never reuse a sequence number. J = 1024 * D leaves room for ~1000 checkpoint
    periods of etcd trouble before a busy SA has to wait for etcd."""
    return 1024 * checkpoint_packets


@dataclass(frozen=True, slots=True)
class NodeConfig:
    common: Config
    node: NodeSection


def _ip(value: str, where: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ConfigError(f"{where} is not an IP address: {value!r}") from None


def node_config(common: Config, overrides: dict[str, Any] | None = None) -> NodeConfig:
    """Check the [node] section of a loaded configuration; `overrides` are CLI flags."""
    s = common.section("node")
    data = dict(s.data)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    s.data = data
    where = f"{common.source}: [node]"
    section = NodeSection(
        id=s.get("id", str), vip=_ip(s.get("vip", str), f"{where} vip"),
        address=_ip(s.get("address", str), f"{where} address"),
        capacity=s.get("capacity", int, 100), tun=s.get("tun", str, "ipsc0"),
        health_port=s.get("health_port", int, 4501), lease_ttl_s=s.get("lease_ttl_s", int, 3),
        checkpoint_packets=s.get("checkpoint_packets", int, 1024),
        checkpoint_ms=s.get("checkpoint_ms", int, 200),
        replay_window=s.get("replay_window", int, 1024),
        keyd_address=s.get("keyd_address", str, None),
        natt_port=s.get("natt_port", int, 4500), ike_port=s.get("ike_port", int, 500),
        tun_mtu=s.get("tun_mtu", int, 1400),
        fence_grace_ms=s.get("fence_grace_ms", int, 1000),
        ready_wait_ms=s.get("ready_wait_ms", int, 500),
        address6=s.get("address6", str, None),
        dataplane=s.get("dataplane", str, "userspace"),
    )
    if section.address6 is not None:
        address6 = _ip(section.address6, f"{where} address6")
        if ":" not in address6:
            raise ConfigError(f"{where} address6 must be an IPv6 address: {address6!r}")
        section = replace(section, address6=address6)
    if section.keyd_address is not None:
        section = replace(section, keyd_address=_ip(section.keyd_address,
                                                    f"{where} keyd_address"))
    checks = [
        (section.capacity >= 0, "capacity must be >= 0"),
        (0 < len(section.tun) < 16, "tun must be a 1..15 character interface name"),
        (0 < section.health_port < 65536, "health_port must be 1..65535"),
        (0 < section.natt_port < 65536, "natt_port must be 1..65535"),
        (0 < section.ike_port < 65536, "ike_port must be 1..65535"),
        (section.lease_ttl_s >= 2, "lease_ttl_s must be >= 2"),
        (section.checkpoint_packets >= 1, "checkpoint_packets must be >= 1"),
        (section.checkpoint_ms >= 10, "checkpoint_ms must be >= 10"),
        (MIN_WINDOW <= section.replay_window <= MAX_WINDOW,
         f"replay_window must be {MIN_WINDOW}..{MAX_WINDOW}"),
        (576 <= section.tun_mtu <= 65535, "tun_mtu must be 576..65535"),
        (section.fence_grace_ms >= 0, "fence_grace_ms must be >= 0"),
        (0 <= section.ready_wait_ms <= 60_000, "ready_wait_ms must be 0..60000"),
        (section.dataplane in DATAPLANES,
         f"dataplane must be one of {', '.join(DATAPLANES)}, not {section.dataplane!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"{where} {message}")
    return NodeConfig(common, section)


def load_node_config(path: str | Path, overrides: dict[str, Any] | None = None) -> NodeConfig:
    return node_config(load_config(path), overrides)
