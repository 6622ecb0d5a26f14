"""keyd's configuration: the TOML file of docs/configuration.md, overridden by flags.

The common sections ([cluster], [etcd], [log], [metrics]) are read by `cluster.config`, as
every daemon reads them; `[keyd]` is typed here. Every problem is a `ConfigError` with one
line that names the file and the field; the daemon prints it and exits 2. Secrets are read
from files (never inlined) and those files must not be readable by group or others.

Connections (`[[keyd.connections]]`, keyd/ike/connections.py) are read here too; without
any, [keyd] itself is the one connection, as before connections existed.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from cluster.config import (
    ClusterSection,
    Config,
    ConfigError,
    EtcdSection,
    LogSection,
    MetricsSection,
    parse_config,
)
from cluster.config import (
    load_config as load_common,
)
from cluster.store.records import gateway_ok
from keyd.ike.proposals import parse_esp_proposals, parse_ike_proposals

from .ike.connections import (
    Connection,
    LocalAuth,
    RemoteAuth,
    legacy_connections,
)
from .ike.errors import IkeUsageError

DEFAULT_PATH = Path("/etc/ipsec-cluster/keyd.toml")


@dataclass(frozen=True, slots=True)
class KeydSection:
    id: str = "keyd-1"
    vip: str = "203.0.113.10"
    ike_port: int = 500
    natt_port: int = 4500
    identity: str = ""
    psk_file: str | None = None
    # PSKs and EAP users by identity (keyd/secrets.py); read again on SIGHUP
    secrets_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None
    ike_proposals: tuple[str, ...] = (
        "aes128gcm16-prfsha256-x25519", "aes256-sha384-ecp384",
        "chacha20poly1305-prfsha256-x25519", "aes128-sha256-modp2048",
    )
    esp_proposals: tuple[str, ...] = (
        "aes128gcm16", "aes256-sha256", "chacha20poly1305", "aes128gcm16-esn",
    )
    pool: str = "10.99.0.0/16"
    pool6: str = ""  # IPv6 virtual addresses (INTERNAL_IP6_ADDRESS); "": none
    dns: tuple[str, ...] = ()
    dns_domains: tuple[str, ...] = ()
    protected_networks: tuple[str, ...] = ("0.0.0.0/0",)
    policy: str = ""
    half_open_cookie_threshold: int = 100
    ike_lifetime_s: int = 14400
    child_lifetime_s: int = 3600
    # Not in the common contract: the address recorded in keyd/<id> (the back-end address the
    # sprayer routes IKE to). Defaults to the VIP.
    address: str | None = None
    # How often expired IKE SAs left in etcd by a dead instance are swept (0 disables).
    sweep_interval_s: float = 60.0
    # EAP (RFC 7296 §2.16) for clients whose IKE_AUTH has no AUTH: "" (none),
    # "eap-mschapv2" (passwords from eap_users_file) or "eap-radius" (radius_servers)
    eap: str = ""
    eap_identity: str = "ask"  # "ask": EAP-Identity first; "idi": the IKE identity
    eap_users_file: str | None = None  # TOML, [eap_users] "name" = "password"; 0600
    radius_servers: tuple[str, ...] = ()  # "host:port", tried in order
    radius_secret_file: str | None = None  # the shared secret of every server; 0600
    radius_timeout_s: float = 2.0  # per try
    radius_tries: int = 3  # sends of one request to one server
    nas_identifier: str = "keyd"
    # IKE fragmentation (RFC 7383, keyd/ike/fragments.py): announce it; fragment our messages
    # larger than fragment_mtu (the whole IP datagram); what reassembly may hold
    fragmentation: bool = True
    fragment_mtu: int = 1280
    fragment_max_fragments: int = 64
    fragment_max_message_bytes: int = 65535
    fragment_max_incomplete: int = 128
    fragment_max_incomplete_per_sa: int = 2
    fragment_timeout_s: float = 10.0
    # MOBIKE (RFC 4555): answer MOBIKE_SUPPORTED; clients announce address changes
    mobike: bool = True
    # Redirect (RFC 5685): send every new client that supports it to this gateway (an
    # address or DNS name) in IKE_SA_INIT; "" serves them (docs/operator-guide.md)
    redirect_to: str = ""


@dataclass(frozen=True, slots=True)
class KeydConfig:
    common: Config
    keyd: KeydSection
    # whom keyd accepts, in order: `[[keyd.connections]]`, or the one [keyd] describes
    connections: tuple[Connection, ...] = ()
    # True: `[[keyd.connections]]` were given (False: the legacy single connection)
    explicit_connections: bool = False

    @property
    def source(self) -> str:
        return self.common.source

    @property
    def cluster(self) -> ClusterSection:
        return self.common.cluster

    @property
    def etcd(self) -> EtcdSection:
        return self.common.etcd

    @property
    def log(self) -> LogSection:
        return self.common.log

    @property
    def metrics(self) -> MetricsSection:
        return self.common.metrics

    @property
    def address(self) -> str:
        return self.keyd.address or self.keyd.vip


_COMMON = {"cluster": ClusterSection, "etcd": EtcdSection, "log": LogSection,
           "metrics": MetricsSection}


def load_config(path: str | Path | None, overrides: Mapping[str, Any] | None = None) -> KeydConfig:
    """Read the TOML file (None: defaults only), apply `overrides` ("section.field" → value,
    None values ignored), and validate. Raises ConfigError."""
    common = load_common(path) if path is not None else parse_config("", "<defaults>")
    source = common.source
    keyd_table = common.raw.get("keyd", {})
    if not isinstance(keyd_table, dict):
        raise ConfigError(f"{source}: [keyd] must be a table")
    keyd_table = dict(keyd_table)
    conn_tables = keyd_table.pop("connections", None)
    sections: dict[str, Any] = {n: getattr(common, n) for n in _COMMON}
    for dotted, value in (overrides or {}).items():
        if value is None or value == ():
            continue
        section, _, name = dotted.partition(".")
        if section == "keyd":
            keyd_table[name] = value
        else:
            if isinstance(value, tuple):
                value = list(value)
            sections[section] = replace(sections[section], **{name: value})
    common = replace(common, **sections)
    config = KeydConfig(common, _build(source, "keyd", KeydSection, keyd_table))
    _validate(config)
    conns = _legacy(config) if conn_tables is None else _connections(config, conn_tables)
    return replace(config, connections=conns, explicit_connections=conn_tables is not None)


def _build(source: str, section: str, cls: type, table: dict[str, Any]) -> Any:
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"{source}: [{section}] unknown field {key!r}")
        default = getattr(cls(), key)
        values[key] = _coerce(source, f"{section}.{key}", default, value)
    return cls(**values)


def _coerce(source: str, where: str, default: Any, value: Any) -> Any:
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{source}: {where} must be {expected}, not {value!r}")

    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad("a number")
        return float(value)
    if isinstance(default, tuple):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise bad("a list of strings")
        return tuple(value)
    if not isinstance(value, str):
        raise bad("a string")
    return value


def _validate(config: KeydConfig) -> None:
    src, k = config.source, config.keyd

    def fail(msg: str) -> ConfigError:
        return ConfigError(f"{src}: {msg}")

    for name in ("vip", "address"):
        value = getattr(k, name)
        if value is None:
            continue
        try:
            if ipaddress.ip_address(value).version != 4:
                raise fail(f"keyd.{name} must be an IPv4 address: {value!r}")
        except ValueError:
            raise fail(f"keyd.{name} is not an IP address: {value!r}") from None
    for name in ("ike_port", "natt_port"):
        if not 0 <= getattr(k, name) <= 65535:
            raise fail(f"keyd.{name} out of range: {getattr(k, name)}")
    if k.ike_port == k.natt_port and k.ike_port != 0:
        raise fail("keyd.ike_port and keyd.natt_port must differ")
    _check_pool(src, "keyd.pool", k.pool)
    _check_pool6(src, "keyd", k.pool6, k.protected_networks)
    _check_offer(src, "keyd", k.dns, k.dns_domains, k.protected_networks, k.policy or None)
    if not k.identity:
        raise fail("keyd.identity is required (the gateway's IKE identity)")
    if not k.ike_proposals or not k.esp_proposals:
        raise fail("keyd.ike_proposals and keyd.esp_proposals must not be empty")
    try:  # each string: one proposal with several algorithms per type, several, or default
        for text in k.ike_proposals:
            parse_ike_proposals(text)
        for text in k.esp_proposals:
            parse_esp_proposals(text)
    except IkeUsageError as exc:
        raise fail(f"keyd proposals: {exc}") from None
    if not k.psk_file and not k.cert_file and not k.secrets_file:
        raise fail("keyd needs psk_file or cert_file (or both) to authenticate, or a "
                   "secrets_file")
    if k.cert_file and not k.key_file:
        raise fail("keyd.cert_file needs keyd.key_file")
    if k.half_open_cookie_threshold < 0 or k.ike_lifetime_s <= 0 or k.child_lifetime_s <= 0:
        raise fail("keyd thresholds and lifetimes must be positive")
    if k.eap not in ("", "eap-mschapv2", "eap-radius"):
        raise fail(f"keyd.eap must be eap-mschapv2 or eap-radius, not {k.eap!r}")
    if k.eap_identity not in ("ask", "idi"):
        raise fail(f"keyd.eap_identity must be ask or idi, not {k.eap_identity!r}")
    if k.eap == "eap-mschapv2" and not k.eap_users_file:
        raise fail("keyd.eap = eap-mschapv2 needs keyd.eap_users_file")
    if k.eap == "eap-radius" and not (k.radius_servers and k.radius_secret_file):
        raise fail("keyd.eap = eap-radius needs keyd.radius_servers and "
                   "keyd.radius_secret_file")
    for server in k.radius_servers:
        host, sep, port = server.rpartition(":")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise fail(f"keyd.radius_servers: {server!r} is not address:port") from None
        if not sep or not port.isdigit() or not 0 < int(port) <= 65535:
            raise fail(f"keyd.radius_servers: {server!r} is not address:port")
    if not 576 <= k.fragment_mtu <= 65535:
        raise fail(f"keyd.fragment_mtu must be 576..65535, not {k.fragment_mtu}")
    if min(k.fragment_max_fragments, k.fragment_max_message_bytes, k.fragment_max_incomplete,
           k.fragment_max_incomplete_per_sa) < 1 or k.fragment_timeout_s <= 0:
        raise fail("keyd.fragment_* limits must be positive")
    if k.redirect_to and not gateway_ok(k.redirect_to):
        raise fail(f"keyd.redirect_to is not an address or DNS name: {k.redirect_to!r}")
    if k.radius_timeout_s <= 0 or k.radius_tries < 1:
        raise fail("keyd.radius_timeout_s and keyd.radius_tries must be positive")
    if not config.etcd.endpoints:
        raise fail("[etcd] endpoints must not be empty")
    if config.log.level.lower() not in ("debug", "info", "warning", "error"):
        raise fail(f"[log] level must be debug|info|warning|error, not {config.log.level!r}")
    if config.metrics.listen:
        parse_listen(config.metrics.listen, src)


_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
#: what a `[[keyd.connections]]` table may hold; those marked None default to [keyd]'s
_CONNECTION_FIELDS: dict[str, str | None] = {
    "name": "", "ike_proposals": None, "esp_proposals": None, "remote_ids": "list",
    "remote_auth": "", "local_auth": "", "pool": None, "dns": None, "dns_domains": None,
    "protected_networks": None, "policy": None, "pool6": None,
}


def _check_pool(src: str, where: str, pool_text: str, version: int = 4) -> None:
    """A pool of IPv4 (`pool`) or IPv6 (`pool6`) virtual addresses: a network of that family
    of at least 4 addresses."""
    try:
        pool = ipaddress.ip_network(pool_text, strict=True)
    except ValueError as exc:
        raise ConfigError(f"{src}: {where} is not a network: {exc}") from None
    if pool.version != version or pool.num_addresses < 4:
        raise ConfigError(f"{src}: {where} must be an IPv{version} network of at least 4 "
                          f"addresses: {pool_text}")


def _check_pool6(src: str, where: str, pool_text: str, networks: tuple[str, ...]) -> None:
    """An IPv6 pool ("" for none), and an IPv6 network among the protected ones for the
    client's IPv6 traffic to reach (e.g. "::/0")."""
    if not pool_text:
        return
    _check_pool(src, f"{where}.pool6", pool_text, version=6)
    if not any(":" in n for n in networks):
        raise ConfigError(f"{src}: {where}.pool6 needs an IPv6 network in "
                          f"{where}.protected_networks (\"::/0\" for all IPv6 traffic)")


def _check_offer(src: str, where: str, dns: tuple[str, ...], domains: tuple[str, ...],
                 networks: tuple[str, ...], policy: str | None) -> None:
    """What a connection gives its clients: DNS servers, split-DNS domains, networks."""
    for net in networks:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(f"{src}: {where}.protected_networks: not a network: "
                              f"{net!r}") from None
    for ip in dns:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise ConfigError(f"{src}: {where}.dns: not an IP address: {ip!r}") from None
    for d in domains:
        name = d.rstrip(".")
        if not name or len(name) > 253 or not all(_LABEL.match(x) for x in name.split(".")):
            raise ConfigError(f"{src}: {where}.dns_domains: not a DNS name: {d!r}")
    if policy is not None and not _NAME.match(policy):
        raise ConfigError(f"{src}: {where}.policy must be a policy name (letters, digits, "
                          f"'.', '_', '-'), not {policy!r}")


def _legacy(config: KeydConfig) -> tuple[Connection, ...]:
    """[keyd] without `[[keyd.connections]]`: the connections it always meant."""
    k = config.keyd
    try:
        return legacy_connections(
            k.ike_proposals, k.esp_proposals, psk=bool(k.psk_file or k.secrets_file),
            local_auth=LocalAuth.PUBKEY if k.cert_file else LocalAuth.PSK, pool=k.pool,
            dns=k.dns, dns_domains=k.dns_domains, protected_networks=k.protected_networks,
            policy=k.policy or None, eap=k.eap or None, pool6=k.pool6 or None)
    except (IkeUsageError, ValueError) as exc:
        raise ConfigError(f"{config.source}: keyd proposals: {exc}") from None


def _connections(config: KeydConfig, tables: Any) -> tuple[Connection, ...]:
    """`[[keyd.connections]]`: each table a connection; fields it leaves out are [keyd]'s."""
    src, k = config.source, config.keyd
    if not isinstance(tables, list) or not tables or \
            not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{src}: keyd.connections must be a list of tables "
                          "([[keyd.connections]])")
    if k.psk_file:
        raise ConfigError(f"{src}: keyd.psk_file is the PSK of the [keyd] connection only; "
                          "with [[keyd.connections]] put PSKs in keyd.secrets_file "
                          "(id = \"%any\" for any identity)")
    out: list[Connection] = []
    for i, table in enumerate(tables):
        name = table.get("name")
        where = f"keyd.connections[{i}]"
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"{src}: {where}.name must be a name (letters, digits, '.', "
                              f"'_', '-'), not {name!r}")
        where = f"keyd.connections.{name}"
        if name in (c.name for c in out):
            raise ConfigError(f"{src}: {where}: a second connection of that name")
        for key in table:
            if key not in _CONNECTION_FIELDS:
                raise ConfigError(f"{src}: {where}: unknown field {key!r}")
        v: dict[str, Any] = {}
        for key in _CONNECTION_FIELDS:
            if key == "name":
                continue
            default: Any = {"remote_ids": ("%any",), "remote_auth": "",
                            "local_auth": "pubkey"}.get(key)
            if default is None:
                default = getattr(k, key)
            v[key] = _coerce(src, f"{where}.{key}", default, table[key]) \
                if key in table else default
        for key, enum in (("remote_auth", RemoteAuth), ("local_auth", LocalAuth)):
            allowed = "|".join(e.value for e in enum)
            if not v[key]:
                raise ConfigError(f"{src}: {where}.{key} is required ({allowed})")
            if v[key] not in {e.value for e in enum}:
                raise ConfigError(f"{src}: {where}.{key} must be {allowed}, not {v[key]!r}")
        if not v["remote_ids"] or not all(x.strip() for x in v["remote_ids"]):
            raise ConfigError(f"{src}: {where}.remote_ids must be identities (or \"%any\")")
        _check_pool(src, f"{where}.pool", v["pool"])
        _check_pool6(src, where, v["pool6"], v["protected_networks"])
        _check_offer(src, where, v["dns"], v["dns_domains"], v["protected_networks"],
                     v["policy"] or None)
        if v["local_auth"] == "psk" and v["remote_auth"] != "psk":
            raise ConfigError(f"{src}: {where}.local_auth = psk needs remote_auth = psk "
                              "(keyd proves itself with the PSK the client proved with)")
        if v["local_auth"] == "pubkey" and not k.cert_file:
            raise ConfigError(f"{src}: {where}.local_auth = pubkey needs keyd.cert_file")
        if v["remote_auth"] == "pubkey" and not k.ca_file:
            raise ConfigError(f"{src}: {where}.remote_auth = pubkey needs keyd.ca_file")
        if v["remote_auth"] in ("psk", "eap-mschapv2") and not k.secrets_file:
            raise ConfigError(f"{src}: {where}.remote_auth = {v['remote_auth']} needs "
                              "keyd.secrets_file")
        if v["remote_auth"] in ("eap-radius", "eap-tls") and k.eap != "eap-radius":
            # the RADIUS servers are [keyd]'s (docs/eap.md): without them the connection
            # would refuse every client (eap_unavailable)
            raise ConfigError(f"{src}: {where}.remote_auth = {v['remote_auth']} needs "
                              "keyd.eap = \"eap-radius\" (with keyd.radius_servers and "
                              "keyd.radius_secret_file)")
        for key in ("ike_proposals", "esp_proposals"):
            if not v[key]:
                raise ConfigError(f"{src}: {where}.{key} must not be empty")
        try:
            out.append(Connection(
                name, v["ike_proposals"], v["esp_proposals"], remote_ids=v["remote_ids"],
                remote_auth=RemoteAuth(v["remote_auth"]),
                local_auth=LocalAuth(v["local_auth"]), pool=v["pool"], dns=v["dns"],
                dns_domains=v["dns_domains"], protected_networks=v["protected_networks"],
                policy=v["policy"] or None, pool6=v["pool6"] or None))
        except (IkeUsageError, ValueError) as exc:
            raise ConfigError(f"{src}: {where} proposals: {exc}") from None
    return tuple(out)


def parse_listen(listen: str, source: str = "metrics.listen") -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{source}: metrics.listen must be host:port, not {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def read_secret(path: str, what: str) -> bytes:
    """A secret file's bytes, refusing one that group or others can read (must be 0600)."""
    try:
        st = os.stat(path)
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"{what} {path} is readable by group or others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}); chmod 600 it")
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path}: no such file") from None
    except PermissionError:
        raise ConfigError(f"{what} {path}: permission denied") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path}: is a directory") from None


def read_psk(path: str) -> bytes:
    """The pre-shared key: the file's bytes without a trailing newline; "0x…" means hex and
    "0s…" base64 (decode_psk)."""
    data = read_secret(path, "PSK file").rstrip(b"\r\n")
    if not data:
        raise ConfigError(f"PSK file {path} is empty")
    if data.startswith((b"0x", b"0s")):
        try:
            return decode_psk(data.decode("ascii"), f"PSK file {path}")
        except UnicodeDecodeError:
            raise ConfigError(f"PSK file {path}: {data[:2].decode()}… is not "
                              "ASCII") from None
    return data


def decode_psk(value: str, where: str) -> bytes:
    """A PSK as strongSwan reads one: "0x…" hex, "0s…" base64, else its characters in
    UTF-8. A bad encoding is a ConfigError naming `where`, never the secret."""
    if not value.startswith(("0x", "0s")):
        return value.encode("utf-8")
    hexed = value.startswith("0x")
    try:
        key = bytes.fromhex(value[2:]) if hexed else base64.b64decode(value[2:], validate=True)
    except (ValueError, binascii.Error):
        raise ConfigError(f"{where}: {value[:2]}… is not valid "
                          f"{'hex' if hexed else 'base64'}") from None
    if not key:
        raise ConfigError(f"{where} must not be empty")
    return key


def read_eap_users(path: str) -> dict[str, str]:
    """The EAP users file: TOML with one table, `[eap_users]`, of "identity" = "password"."""
    raw = read_secret(path, "EAP users file")
    try:
        table = tomllib.loads(raw.decode("utf-8")).get("eap_users", {})
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"EAP users file {path}: {exc}") from None
    if not isinstance(table, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in table.items()):
        raise ConfigError(f"EAP users file {path}: [eap_users] must map names to "
                          "non-empty password strings")
    return dict(table)


def read_public(path: str, what: str) -> bytes:
    """A certificate or CA file (public, no mode check)."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror or exc}") from None


