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
from cluster.lab.pki import EAP_DOMAIN, SHARED_DOMAIN
from cluster.lab.vm import patient

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


KEYD = Daemon("keyd", "keyd.main")
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
    etcd_endpoints: tuple[str, ...] = tuple(A.etcd_endpoints(1))  # every member's

    def sections(self, metrics: str) -> dict[str, dict[str, Value]]:
        return {
            "cluster": {"name": self.cluster, "prefix": "/ipsec-cluster",
                        "data_key_file": str(self.data_key_file)},
            "etcd": {"endpoints": list(self.etcd_endpoints), "timeout_s": patient(2.0)},
            "log": {"level": "info", "json": False},
            "metrics": {"listen": metrics},
        }


#: the nodes' and the sprayer's etcd leases (longer inside the VM, whose TCG guest on a shared
#: machine misses 3 s keepalives)
LEASE_TTL_S = int(patient(3))

LAB_IKE_PROPOSALS = [
    "default",
    "aes256-aes192-aes128-aes256ctr-aes192ctr-aes128ctr-sha256-sha384-sha512-sha1-aescmac"
    "-modp2048-modp3072-modp4096-ecp256-ecp384-ecp521-x25519",
    "aes256gcm16-aes256gcm12-aes256gcm8-aes128gcm16-aes128gcm12-aes128gcm8-prfsha256"
    "-prfsha384-prfsha512-prfsha1-prfaescmac-ecp256-ecp384-ecp521-x25519-x448-modp2048"
    "-modp3072-modp4096",
    "3des-sha1-modp1024",
]
LAB_ESP_PROPOSALS = [
    "default",
    "aes256-aes192-aes128-aes256ctr-aes128ctr-sha256-sha512-sha1-aescmac",
    "aes256gcm12-aes256gcm8-aes128gcm12-aes128gcm8",
    "3des-sha1",
]


#: keyd's connections in the lab (docs/lab.md): shared-secret users prove themselves and the
#: gateway by their own PSK; everyone else by certificate, or by PSK with the gateway by
#: certificate. Fields they leave out are [keyd]'s.
LAB_CONNECTIONS: tuple[dict[str, Value], ...] = (
    {"name": "shared-secret", "remote_ids": [f"*@{SHARED_DOMAIN}"], "remote_auth": "psk",
     "local_auth": "psk", "dns_domains": ["lab.example"]},
    {"name": "lab-cert", "remote_auth": "pubkey", "local_auth": "pubkey"},
    {"name": "lab-psk", "remote_auth": "psk", "local_auth": "pubkey"},
)


def keyd_config(common: Common, index: int, secrets_file: Path, cert: Path, key: Path,
                ca: Path, radius: tuple[str, Path] | None = None) -> str:
    s = common.sections("127.0.0.1:9410")
    s["keyd"] = {
        "id": f"keyd-{index}", "vip": A.VIP, "address": A.keyd_ip(index),
        "ike_port": 500, "natt_port": 4500,
        "identity": A.GATEWAY_ID, "secrets_file": str(secrets_file), "cert_file": str(cert),
        "key_file": str(key), "ca_file": str(ca),
        # as an operator writes it (docs/configuration.md): the modern default, plus what
        # Windows (SHA-1), Android (AES-CTR, AES-CMAC, short GCM ICVs) and, by name, legacy
        # Windows defaults (3DES, MODP1024) need
        "ike_proposals": LAB_IKE_PROPOSALS,
        "esp_proposals": LAB_ESP_PROPOSALS,
        "pool": A.POOL, "dns": [A.SERVER_IP], "pool6": A.POOL6,
        "protected_networks": [A.PROTECTED_NETWORK, A.PROTECTED_NETWORK6],
        "half_open_cookie_threshold": 100, "ike_lifetime_s": 14400, "child_lifetime_s": 3600,
    }
    # clients that send no AUTH (any identity: Windows' is its address) log in with EAP:
    # EAP-MSCHAPv2 against the secrets file's EAP users, or relayed to the lab's FreeRADIUS;
    # with FreeRADIUS, those that claim an identity in EAP_DOMAIN are still keyd's own
    eap: dict[str, Value] = {"name": "lab-eap", "remote_auth": "eap-mschapv2",
                             "local_auth": "pubkey"}
    eaps = [eap]
    if radius is not None:
        server, secret_file = radius
        s["keyd"].update({"eap": "eap-radius", "radius_servers": [server],
                          "radius_secret_file": str(secret_file)})
        eap["remote_auth"] = "eap-radius"
        eaps.insert(0, {"name": "eap-local", "remote_ids": [f"*@{EAP_DOMAIN}"],
                        "remote_auth": "eap-mschapv2", "local_auth": "pubkey"})
    conns = "".join("\n[[keyd.connections]]\n" + "".join(
        f"{k} = {_toml_value(v)}\n" for k, v in c.items()) for c in (*LAB_CONNECTIONS, *eaps))
    return toml(s) + conns


def node_config(common: Common, index: int, dataplane: str = "userspace") -> str:
    s = common.sections("127.0.0.1:9411")
    s["node"] = {
        "id": f"node-{index}", "vip": A.VIP, "address": A.node_ip(index), "capacity": 100,
        "tun": "ipsc0", "health_port": 4501, "lease_ttl_s": LEASE_TTL_S, "checkpoint_packets": 1024,
        "checkpoint_ms": 200, "replay_window": 1024, "keyd_address": A.keyd_ip(1),
        "address6": A.node_ip6(index), "dataplane": dataplane,
    }
    return toml(s)


def sprayer_config(common: Common, keyd: int) -> str:
    s = common.sections("127.0.0.1:9412")
    s["sprayer"] = {
        "id": "sprayer-1", "vip": A.VIP, "driver": "nft",
        "keyd": [A.keyd_ip(i) for i in range(1, keyd + 1)], "probe_interval_ms": 100,
        "probe_misses": 3, "lease_ttl_s": LEASE_TTL_S, "rebalance_moves_per_s": 50,
        "handoff_timeout_ms": int(patient(1000)),
    }
    return toml(s)


def hooks_config(common: Common, directory: Path, state_file: Path) -> str:
    s = common.sections("127.0.0.1:9413")
    s["hooks"] = {"directory": str(directory), "timeout_s": 10, "retries": 3,
                  "queue_size": 1000, "state_file": str(state_file)}
    return toml(s)
