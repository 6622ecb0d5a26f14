"""Every etcd key of the cluster, built in one place.

Layout under `<prefix>/<cluster>/` (DESIGN.md, "Keyspace"):

    nodes/<id>          keyd/<id>          ike/<spi_i 16 hex><spi_r 16 hex>
    sa/<spi_in 8 hex>   assign/<ike-sa-id> seq/<spi_in 8 hex>
    pool/<dotted ip>    policy/<name>      redirect/<ike-sa-id>
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass
from typing import overload

KINDS = ("nodes", "keyd", "ike", "sa", "assign", "seq", "pool", "policy", "redirect")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_SPI = re.compile(r"^[0-9a-f]{8}$")
_IKE_SA_ID = re.compile(r"^[0-9a-f]{32}$")


class BadKey(ValueError):
    """A key (or a part of one) does not follow the keyspace layout."""


@overload
def spi_hex(spi: int) -> str: ...
@overload
def spi_hex(spi: None) -> None: ...
@overload
def spi_hex(spi: int | None) -> str | None: ...


def spi_hex(spi: int | None) -> str | None:
    """An SPI as it appears in keys and everywhere it is shown: 8 lowercase hex digits (None
    for no SPI, as in an event or a record field that has none)."""
    if spi is None:
        return None
    if not 0 < spi <= 0xFFFFFFFF:
        raise BadKey(f"SPI out of range: {spi}")
    return f"{spi:08x}"


def parse_spi(text: str) -> int:
    if not _SPI.match(text):
        raise BadKey(f"not an SPI (8 lowercase hex digits): {text!r}")
    spi = int(text, 16)
    if spi == 0:
        raise BadKey("SPI 0 is reserved")
    return spi


def ike_sa_id(spi_i: int, spi_r: int) -> str:
    """The IKE SA id: the initiator's then the responder's 64-bit SPI, 16 hex digits each."""
    for spi in (spi_i, spi_r):
        if not 0 <= spi <= 0xFFFFFFFFFFFFFFFF:
            raise BadKey(f"IKE SPI out of range: {spi}")
    return f"{spi_i:016x}{spi_r:016x}"


def parse_ike_sa_id(text: str) -> tuple[int, int]:
    if not _IKE_SA_ID.match(text):
        raise BadKey(f"not an IKE SA id (32 lowercase hex digits): {text!r}")
    return int(text[:16], 16), int(text[16:], 16)


def check_name(name: str) -> str:
    """Node, keyd and policy names: letters, digits, `.`, `_`, `-`; no slash."""
    if not _NAME.match(name):
        raise BadKey(f"bad name {name!r}: letters, digits, '.', '_', '-' (max 63)")
    return name


@functools.lru_cache(maxsize=4096)
def check_ip(ip: str) -> str:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        raise BadKey(f"not an IP address: {ip!r}") from None


@functools.lru_cache(maxsize=1024)
def _kind_prefix(prefix: str, cluster: str, kind: str) -> str:
    """`<root><kind>/`; asked for on every key, so built once."""
    if kind not in KINDS:
        raise BadKey(f"unknown key kind {kind!r}")
    return f"{prefix.rstrip('/')}/{cluster}/{kind}/"


@dataclass(frozen=True, slots=True)
class Keyspace:
    """Key builder for one cluster. `root` is `<prefix>/<cluster>/`, always with a slash."""

    cluster: str = "default"
    prefix: str = "/ipsec-cluster"

    def __post_init__(self) -> None:
        check_name(self.cluster)
        if not self.prefix.startswith("/") or (self.prefix.endswith("/") and self.prefix != "/"):
            raise BadKey(f"prefix must start with '/' and not end with one: {self.prefix!r}")

    @property
    def root(self) -> str:
        return f"{self.prefix.rstrip('/')}/{self.cluster}/"

    def kind_prefix(self, kind: str) -> str:
        """`<root><kind>/`: the prefix a watch or a list of one record kind uses."""
        return _kind_prefix(self.prefix, self.cluster, kind)

    def node(self, node_id: str) -> str:
        return self.kind_prefix("nodes") + check_name(node_id)

    def keyd(self, keyd_id: str) -> str:
        return self.kind_prefix("keyd") + check_name(keyd_id)

    def ike(self, ike_id: str) -> str:
        parse_ike_sa_id(ike_id)
        return self.kind_prefix("ike") + ike_id

    def sa(self, spi_in: int) -> str:
        return self.kind_prefix("sa") + spi_hex(spi_in)

    def assign(self, ike_id: str) -> str:
        parse_ike_sa_id(ike_id)
        return self.kind_prefix("assign") + ike_id

    def seq(self, spi_in: int) -> str:
        return self.kind_prefix("seq") + spi_hex(spi_in)

    def pool(self, ip: str) -> str:
        return self.kind_prefix("pool") + check_ip(ip)

    def policy(self, name: str) -> str:
        return self.kind_prefix("policy") + check_name(name)

    def redirect(self, ike_id: str) -> str:
        parse_ike_sa_id(ike_id)
        return self.kind_prefix("redirect") + ike_id

    def split(self, key: str | bytes) -> tuple[str, str]:
        """(kind, name) of a full key of this cluster; BadKey if it is not one."""
        text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
        if not text.startswith(self.root):
            raise BadKey(f"key outside cluster {self.cluster!r}: {text!r}")
        kind, sep, name = text[len(self.root):].partition("/")
        if not sep or kind not in KINDS or not name:
            raise BadKey(f"not a cluster key: {text!r}")
        return kind, name
