"""Connections, as swanctl.conf users know them, and which one an IKE SA uses.

A connection says whom keyd accepts (remote identities and the client's authentication
round), how keyd proves itself, which proposals it negotiates, and what the client gets
(pool, DNS, split-DNS domains, traffic selectors, the traffic policy the nodes enforce).

The choice is made in two steps, because the client's identity arrives only in IKE_AUTH:

- IKE_SA_INIT: the IKE proposal is chosen from the union of every connection's IKE
  proposals, in connection order (`ike_suites_of`);
- IKE_AUTH: the first connection whose remote identities match the client's IDi, whose
  authentication round is the one the client's IKE_AUTH asks for (an AUTH payload by shared
  key or by signature; no AUTH payload asks for EAP, RFC 7296 §2.16) and which accepts the
  IKE suite negotiated in IKE_SA_INIT is used (`select_connection`). None: the client is
  refused with AUTHENTICATION_FAILED (reason `no_matching_connection`).

Everything here is pure data and matching: no files, no clock (docs/configuration.md).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from .constants import AuthMethod
from .errors import IkeUsageError
from .proposals import EspProposal, IkeProposal, parse_esp_proposals, parse_ike_proposals
from .transforms import IkeSuite

ANY_ID = "%any"


class RemoteAuth(StrEnum):
    """The authentication round a connection requires of the client (swanctl's
    `remote.auth`)."""

    PUBKEY = "pubkey"
    PSK = "psk"
    EAP_MSCHAPV2 = "eap-mschapv2"
    EAP_RADIUS = "eap-radius"
    EAP_TLS = "eap-tls"

    @property
    def is_eap(self) -> bool:
        return self.value.startswith("eap-")


class LocalAuth(StrEnum):
    """How keyd proves itself on a connection (swanctl's `local.auth`)."""

    PUBKEY = "pubkey"
    PSK = "psk"


class Offered(StrEnum):
    """What the client's IKE_AUTH request offers to prove itself with."""

    PSK = "psk"
    PUBKEY = "pubkey"
    EAP = "eap"     # no AUTH payload (§2.16)


def offered_by(auth_method: int | None) -> Offered:
    """An AUTH payload's method (None: no AUTH payload) as a kind of proof."""
    if auth_method is None:
        return Offered.EAP
    return Offered.PSK if auth_method == AuthMethod.PSK else Offered.PUBKEY


def _accepts(remote_auth: RemoteAuth, offered: Offered) -> bool:
    if offered == Offered.EAP:
        return remote_auth.is_eap
    return remote_auth.value == offered.value


@dataclass(frozen=True, slots=True)
class IdentityPattern:
    """A remote identity a connection or a secret applies to: exact (`alice@example.org`,
    `CN=alice, O=Example`), a wildcard (`*@example.org`, `*.clients.example.org`,
    `C=CH, O=Example, CN=*`: each `*` stands for any run of characters), or `%any`.
    Compared without regard to case (DNS names and mail domains are case-insensitive;
    identities that differ only in case are a configuration mistake anyway)."""

    text: str
    _regex: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        text = self.text.strip()
        if not text:
            raise IkeUsageError("an identity pattern must not be empty")
        object.__setattr__(self, "text", text)
        regex = None
        if "*" in text and text != ANY_ID:
            regex = re.compile(".*".join(re.escape(p) for p in text.casefold().split("*")),
                               re.DOTALL)
        object.__setattr__(self, "_regex", regex)

    @property
    def is_any(self) -> bool:
        return self.text == ANY_ID

    @property
    def is_exact(self) -> bool:
        return not self.is_any and self._regex is None

    def matches(self, identity: str) -> bool:
        if self.is_any:
            return True
        if self._regex is not None:
            return self._regex.fullmatch(identity.casefold()) is not None
        return identity.casefold() == self.text.casefold()


@dataclass(frozen=True, slots=True)
class Connection:
    """One connection (docs/configuration.md, `[[keyd.connections]]`). Proposals are
    keyd's proposal strings; networks and addresses are text (checked by the config
    reader, and again here where the core depends on them)."""

    name: str
    ike_proposals: tuple[str, ...]
    esp_proposals: tuple[str, ...]
    remote_ids: tuple[str, ...] = (ANY_ID,)
    remote_auth: RemoteAuth = RemoteAuth.PSK
    local_auth: LocalAuth = LocalAuth.PUBKEY
    pool: str | None = None              # virtual IPs (None: none offered)
    dns: tuple[str, ...] = ()            # INTERNAL_IP4_DNS, INTERNAL_IP6_DNS
    dns_domains: tuple[str, ...] = ()    # INTERNAL_DNS_DOMAIN (RFC 8598, split DNS)
    protected_networks: tuple[str, ...] = ("0.0.0.0/0",)   # TSr; INTERNAL_IP4/6_SUBNET
    policy: str | None = None            # the traffic policy (policy/<name>) the nodes apply
    pool6: str | None = None             # IPv6 virtual addresses (None: none offered)
    patterns: tuple[IdentityPattern, ...] = field(init=False, repr=False)
    # the proposals above, parsed (each string may hold several, or `default`)
    ike_suites: tuple[IkeProposal, ...] = field(init=False, repr=False)
    esp_suites: tuple[EspProposal, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.ike_proposals or not self.esp_proposals:
            raise IkeUsageError(f"connection {self.name}: IKE and ESP proposals are "
                                     "needed")
        if not self.remote_ids:
            raise IkeUsageError(f"connection {self.name}: remote_ids must not be empty")
        object.__setattr__(self, "remote_auth", RemoteAuth(self.remote_auth))
        object.__setattr__(self, "local_auth", LocalAuth(self.local_auth))
        if self.local_auth == LocalAuth.PSK and self.remote_auth != RemoteAuth.PSK:
            # keyd proves itself with the PSK of the identity the client proved
            raise IkeUsageError(f"connection {self.name}: local_auth = psk needs "
                                     "remote_auth = psk")
        object.__setattr__(self, "patterns",
                           tuple(IdentityPattern(i) for i in self.remote_ids))
        object.__setattr__(self, "ike_suites",
                           tuple(x for p in self.ike_proposals for x in parse_ike_proposals(p)))
        object.__setattr__(self, "esp_suites",
                           tuple(x for p in self.esp_proposals for x in parse_esp_proposals(p)))

    def accepts_identity(self, identity: str) -> bool:
        return any(p.matches(identity) for p in self.patterns)

    def accepts_ike_suite(self, suite: IkeSuite) -> bool:
        return any(p.accepts(suite) for p in self.ike_suites)


@dataclass(frozen=True, slots=True)
class Selection:
    """The outcome of `select_connection`: the connection, or why there is none."""

    connection: Connection | None
    reason: str = ""     # for the log when there is no connection


def select_connection(connections: Sequence[Connection], identity: str,
                      auth_method: int | None, suite: IkeSuite) -> Selection:
    """The first connection that accepts `identity`, the proof the client offers (the AUTH
    payload's method; None: no AUTH payload, i.e. EAP) and the negotiated IKE `suite`."""
    offered = offered_by(auth_method)
    by_id = [c for c in connections if c.accepts_identity(identity)]
    if not by_id:
        return Selection(None, f"no connection accepts identity {identity!r}")
    by_auth = [c for c in by_id if _accepts(c.remote_auth, offered)]
    if not by_auth:
        names = ", ".join(c.name for c in by_id)
        return Selection(None, f"{offered.value} authentication is not accepted for "
                               f"{identity!r} (connections {names})")
    for c in by_auth:
        if c.accepts_ike_suite(suite):
            return Selection(c)
    names = ", ".join(c.name for c in by_auth)
    return Selection(None, f"IKE suite {suite.name} is not one of connections {names}")


def legacy_connections(
    ike_proposals: Sequence[str], esp_proposals: Sequence[str], *, psk: bool,
    local_auth: LocalAuth, pool: str | None = None, dns: Sequence[str] = (),
    dns_domains: Sequence[str] = (), protected_networks: Sequence[str] = ("0.0.0.0/0",),
    policy: str | None = None, eap: str | None = None, pool6: str | None = None,
) -> tuple[Connection, ...]:
    """The single-connection configuration of [keyd] without `[[keyd.connections]]`: any
    identity, by certificate (`default-pubkey`, when keyd has a certificate) or, when a PSK
    is configured, by PSK (`default-psk`); keyd proves itself by `local_auth`. `eap`
    ([keyd] eap): also clients that send no AUTH, by that EAP method (`default-eap`; keyd
    proves itself by certificate there)."""
    auths = ([("default-pubkey", RemoteAuth.PUBKEY)] if local_auth == LocalAuth.PUBKEY
             else []) + ([("default-psk", RemoteAuth.PSK)] if psk else [])
    if eap and local_auth == LocalAuth.PUBKEY:
        auths.append(("default-eap", RemoteAuth(eap)))
    out = [Connection(name, tuple(ike_proposals), tuple(esp_proposals), remote_auth=auth,
                      local_auth=local_auth, pool=pool, dns=tuple(dns),
                      dns_domains=tuple(dns_domains),
                      protected_networks=tuple(protected_networks), policy=policy,
                      pool6=pool6)
           for name, auth in auths]
    return tuple(out)


def ike_suites_of(connections: Sequence[Connection]) -> tuple[IkeProposal, ...]:
    """What IKE_SA_INIT negotiates from: every connection's IKE suites, in connection
    order, each once."""
    return tuple(dict.fromkeys(s for c in connections for s in c.ike_suites))


def esp_suites_of(connections: Sequence[Connection]) -> tuple[EspProposal, ...]:
    return tuple(dict.fromkeys(s for c in connections for s in c.esp_suites))
