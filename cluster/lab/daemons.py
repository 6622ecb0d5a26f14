"""The cluster's own daemons as the lab runs them: keyd, cluster-node, sprayer.

Each gets a TOML file rendered from the contract in docs/configuration.md and is started as
`ip netns exec NS <venv>/bin/<daemon> --config FILE`. A daemon whose code is not installed
yet is reported in one line, not a traceback.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cluster.lab import addresses as A

Value = str | int | float | bool | Sequence[str]


@dataclass(frozen=True, slots=True)
class Daemon:
    """A console script and the module:function it runs."""

    script: str
    module: str

    def argv(self, config: Path) -> list[str]:
        return [str(Path(sys.executable).parent / self.script), "--config", str(config)]

    def missing(self) -> str | None:
        """Why this daemon cannot run here, or None when it can."""
        try:
            spec = importlib.util.find_spec(self.module)
        except ModuleNotFoundError:
            spec = None
        if spec is None:
            return f"{self.script} is not available ({self.module} is not installed)"
        if not (Path(sys.executable).parent / self.script).exists():
            return f"{self.script} is not installed in {Path(sys.executable).parent}"
        return None


KEYD = Daemon("keyd", "keyd.server")
NODE = Daemon("cluster-node", "cluster.node.main")
SPRAYER = Daemon("sprayer", "sprayer.main")
HOOKS = Daemon("cluster-hooks", "cluster.hooks.main")


def toml(sections: Mapping[str, Mapping[str, Value]]) -> str:
    """TOML for flat sections of strings, numbers, booleans and lists of strings."""
    out = []
    for section, values in sections.items():
        out.append(f"[{section}]")
        for key, value in values.items():
            out.append(f"{key} = {_toml_value(value)}")
        out.append("")
    return "\n".join(out)


def _toml_value(v: Value) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "[" + ", ".join(_toml_value(x) for x in v) + "]"


@dataclass(frozen=True, slots=True)
class Common:
    """The sections every daemon shares."""

    cluster: str
    data_key_file: Path
    log_dir: Path

    def sections(self, metrics: str) -> dict[str, dict[str, Value]]:
        return {
            "cluster": {"name": self.cluster, "prefix": "/ipsec-cluster",
                        "data_key_file": str(self.data_key_file)},
            "etcd": {"endpoints": [f"http://{A.ETCD_IP}:{A.ETCD_PORT}"], "timeout_s": 2.0},
            "log": {"level": "info", "json": False},
            "metrics": {"listen": metrics},
        }


def keyd_config(common: Common, index: int, psk_file: Path, cert: Path, key: Path,
                ca: Path, eap_users: Path | None = None,
                radius: tuple[str, Path] | None = None) -> str:
    s = common.sections("127.0.0.1:9410")
    s["keyd"] = {
        "id": f"keyd-{index}", "vip": A.VIP, "address": A.keyd_ip(index),
        "ike_port": 500, "natt_port": 4500,
        "identity": A.GATEWAY_ID, "psk_file": str(psk_file), "cert_file": str(cert),
        "key_file": str(key), "ca_file": str(ca),
        "ike_proposals": ["aes128gcm16-prfsha256-x25519", "aes256-sha384-ecp384",
                          "chacha20poly1305-prfsha256-x25519", "aes128-sha256-modp2048"],
        "esp_proposals": ["aes128gcm16", "aes256-sha256", "chacha20poly1305",
                          "aes128gcm16-esn"],
        "pool": A.POOL, "dns": [A.SERVER_IP], "protected_networks": [A.PROTECTED_NETWORK],
        "half_open_cookie_threshold": 100, "ike_lifetime_s": 14400, "child_lifetime_s": 3600,
    }
    if radius is not None:
        # clients that send no AUTH: EAP relayed to the lab's FreeRADIUS
        server, secret_file = radius
        s["keyd"].update({"eap": "eap-radius", "radius_servers": [server],
                          "radius_secret_file": str(secret_file)})
    elif eap_users is not None and eap_users.exists():
        # clients that send no AUTH log in with EAP-MSCHAPv2 (EAP-Identity first)
        s["keyd"].update({"eap": "eap-mschapv2", "eap_users_file": str(eap_users)})
    return toml(s)


def node_config(common: Common, index: int) -> str:
    s = common.sections("127.0.0.1:9411")
    s["node"] = {
        "id": f"node-{index}", "vip": A.VIP, "address": A.node_ip(index), "capacity": 100,
        "tun": "ipsc0", "health_port": 4501, "lease_ttl_s": 3, "checkpoint_packets": 1024,
        "checkpoint_ms": 200, "replay_window": 1024, "keyd_address": A.keyd_ip(1),
    }
    return toml(s)


def sprayer_config(common: Common, keyd: int) -> str:
    s = common.sections("127.0.0.1:9412")
    s["sprayer"] = {
        "id": "sprayer-1", "vip": A.VIP, "driver": "nft",
        "keyd": [A.keyd_ip(i) for i in range(1, keyd + 1)], "probe_interval_ms": 100,
        "probe_misses": 3, "lease_ttl_s": 3, "rebalance_moves_per_s": 50,
        "handoff_timeout_ms": 1000,
    }
    return toml(s)


def hooks_config(common: Common, directory: Path, state_file: Path) -> str:
    s = common.sections("127.0.0.1:9413")
    s["hooks"] = {"directory": str(directory), "timeout_s": 10, "retries": 3,
                  "queue_size": 1000, "state_file": str(state_file)}
    return toml(s)
