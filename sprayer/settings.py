"""The [sprayer] section of docs/configuration.md as one typed value."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from cluster.config import Config, ConfigError
from cluster.store.keyspace import BadKey, check_name

DRIVERS = ("nft", "userspace", "haproxy")


@dataclass(frozen=True, slots=True)
class SprayerSettings:
    id: str = "sprayer-1"
    vip: str = "203.0.113.10"
    driver: str = "nft"
    keyd: list[str] = field(default_factory=list)
    probe_interval_ms: int = 100
    probe_misses: int = 3
    #: a node that came back stays out at least this long; doubled per further flap
    hold_down_ms: int = 1000
    max_hold_down_ms: int = 30000
    lease_ttl_s: int = 3
    rebalance_moves_per_s: float = 50.0
    handoff_timeout_ms: int = 1000
    haproxy_socket: str = "/run/haproxy/admin.sock"
    haproxy_backend: str = "ipsec_nodes"
    #: run the data-plane commands (nft, ip) inside this network namespace (the lab)
    netns: str | None = None
    #: plan rebalancing moves automatically (node joins, undrain); else only failover/drain
    auto_rebalance: bool = True
    #: the leader reads the kernel's SPI map back this often and repairs a difference
    #: (after every full rewrite too); 0 turns the periodic check off
    map_check_interval_s: float = 30.0

    @property
    def probe_interval_s(self) -> float:
        return self.probe_interval_ms / 1000.0

    @property
    def handoff_timeout_s(self) -> float:
        return self.handoff_timeout_ms / 1000.0


def settings_from(config: Config) -> SprayerSettings:
    s = config.section("sprayer")
    d = SprayerSettings()
    out = SprayerSettings(
        id=s.get("id", str, d.id), vip=s.get("vip", str, d.vip),
        driver=s.get("driver", str, d.driver), keyd=s.str_list("keyd", []),
        probe_interval_ms=s.get("probe_interval_ms", int, d.probe_interval_ms),
        probe_misses=s.get("probe_misses", int, d.probe_misses),
        hold_down_ms=s.get("hold_down_ms", int, d.hold_down_ms),
        max_hold_down_ms=s.get("max_hold_down_ms", int, d.max_hold_down_ms),
        lease_ttl_s=s.get("lease_ttl_s", int, d.lease_ttl_s),
        rebalance_moves_per_s=s.get("rebalance_moves_per_s", float, d.rebalance_moves_per_s),
        handoff_timeout_ms=s.get("handoff_timeout_ms", int, d.handoff_timeout_ms),
        haproxy_socket=s.get("haproxy_socket", str, d.haproxy_socket),
        haproxy_backend=s.get("haproxy_backend", str, d.haproxy_backend),
        netns=s.get("netns", str, "") or None,
        auto_rebalance=s.get("auto_rebalance", bool, True),
        map_check_interval_s=s.get("map_check_interval_s", float, d.map_check_interval_s),
    )
    return check(out, f"{config.source}: [sprayer]")


def check(out: SprayerSettings, where: str) -> SprayerSettings:
    """ConfigError unless `out` (from a file, then flags) makes sense; `out` if it does."""
    try:
        check_name(out.id)
    except BadKey as exc:
        raise ConfigError(f"{where} id: {exc}") from None
    if out.driver not in DRIVERS:
        raise ConfigError(f"{where} driver must be one of {', '.join(DRIVERS)}: {out.driver!r}")
    for addr in [out.vip, *out.keyd]:
        try:
            ipaddress.IPv4Address(addr)
        except ValueError:
            raise ConfigError(f"{where} not an IPv4 address: {addr!r}") from None
    if out.driver != "haproxy" and not out.keyd:
        raise ConfigError(f"{where} keyd must list at least one keyd back-end address")
    for name in ("probe_interval_ms", "probe_misses", "lease_ttl_s", "handoff_timeout_ms"):
        if getattr(out, name) <= 0:
            raise ConfigError(f"{where} {name} must be > 0")
    if not 0 <= out.hold_down_ms <= out.max_hold_down_ms:
        raise ConfigError(f"{where} hold_down_ms must be between 0 and max_hold_down_ms")
    if out.rebalance_moves_per_s <= 0:
        raise ConfigError(f"{where} rebalance_moves_per_s must be > 0")
    if out.lease_ttl_s < 2:
        raise ConfigError(f"{where} lease_ttl_s must be at least 2")
    if out.map_check_interval_s < 0:
        raise ConfigError(f"{where} map_check_interval_s must be >= 0 (0: never)")
    return out
