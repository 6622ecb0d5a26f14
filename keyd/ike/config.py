"""What a Responder or an Initiator is configured with (the shell reads files and TOML)."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cryptography import x509

from keyd.eap import RadiusServer

from .auth import PrivateKey, TrustStore
from .connections import (
    Connection,
    LocalAuth,
    esp_suites_of,
    ike_suites_of,
    legacy_connections,
)
from .errors import IkeUsageError
from .fragments import MIN_FRAGMENT_MTU, FragmentLimits
from .proposals import EspProposal, IkeProposal, parse_esp_proposals, parse_ike_proposals
from .secrets import Secrets


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True, slots=True)
class Credentials:
    """How we prove who we are and whom we trust: a shared key and/or a certificate + key;
    `cas` are the CAs peer certificates must chain to; `cert_chain` is sent after `cert`."""

    psk: bytes | None = None
    cert: x509.Certificate | None = None
    private_key: PrivateKey | None = None
    cert_chain: tuple[x509.Certificate, ...] = ()
    cas: tuple[x509.Certificate, ...] = ()
    # certificate validity is checked against this wall clock (injectable for tests)
    clock: Callable[[], datetime.datetime] = _utc_now

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.private_key is None):
            raise IkeUsageError("a certificate needs its private key and vice versa")

    @property
    def trust(self) -> TrustStore:
        return TrustStore(self.cas)


EAP_METHODS = ("eap-mschapv2", "eap-radius")


@dataclass(frozen=True, slots=True)
class EapConfig:
    """The client's EAP round in IKE_AUTH (RFC 7296 §2.16), for a client whose first IKE_AUTH
    carries no AUTH. `method`: "eap-mschapv2" checks passwords with `password_for(identity)`
    (None: no such user); "eap-radius" relays EAP to `radius_servers` (tried in order).
    `ask_identity`: start with EAP-Identity (strongSwan's `eap_id = %any`, what Windows needs:
    its IDi is an address); False uses the IDi as the EAP identity."""

    method: str
    password_for: Callable[[str], str | None] | None = None
    radius_servers: tuple[RadiusServer, ...] = ()
    nas_identifier: str = "keyd"
    ask_identity: bool = True

    def __post_init__(self) -> None:
        if self.method not in EAP_METHODS:
            raise IkeUsageError(f"unknown EAP method {self.method!r}")
        if self.method == "eap-mschapv2" and self.password_for is None:
            raise IkeUsageError("eap-mschapv2 needs EAP users")
        if self.method == "eap-radius" and not self.radius_servers:
            raise IkeUsageError("eap-radius needs a RADIUS server")


def _ike_suites(texts: Sequence[str]) -> tuple[IkeProposal, ...]:
    """The configured IKE proposals, parsed (each string may hold several, or `default`)."""
    if not texts:
        raise IkeUsageError("at least one IKE proposal is needed")
    return tuple(p for t in texts for p in parse_ike_proposals(t))


def _esp_suites(texts: Sequence[str]) -> tuple[EspProposal, ...]:
    """The configured ESP proposals, parsed."""
    if not texts:
        raise IkeUsageError("at least one ESP proposal is needed")
    return tuple(p for t in texts for p in parse_esp_proposals(t))


def _check_fragment_mtu(mtu: int) -> None:
    if not MIN_FRAGMENT_MTU <= mtu <= 65535:
        raise IkeUsageError(f"fragment_mtu must be {MIN_FRAGMENT_MTU}..65535, not {mtu}")


@dataclass(frozen=True, slots=True)
class ResponderConfig:
    """keyd's [keyd] section as the core needs it (docs/configuration.md).

    `connections`: whom keyd accepts, and how (keyd/ike/connections.py). Without any, the
    proposals, networks and DNS given here make the single legacy connection (any identity,
    by certificate or by `credentials.psk`). `secrets`: the PSKs by identity (the legacy
    `credentials.psk` is added as the PSK of any identity); replace them at run time with
    `Responder.use_secrets`."""

    identity: str
    credentials: Credentials
    ike_proposals: Sequence[str] = ("aes128gcm16-prfsha256-x25519",)
    esp_proposals: Sequence[str] = ("aes128gcm16",)
    protected_networks: Sequence[str] = ("0.0.0.0/0",)
    dns: Sequence[str] = ()
    dns_domains: Sequence[str] = ()
    connections: Sequence[Connection] = ()
    secrets: Secrets = field(default_factory=Secrets)
    natt_port: int = 4500
    half_open_cookie_threshold: int = 100
    half_open_timeout_s: float = 30.0
    rekeyed_grace_s: float = 60.0  # an old IKE SA the peer never deletes goes after this
    ike_lifetime_s: int = 14400  # for the shell's sweeper: the core never expires IKE SAs
    child_lifetime_s: int = 3600  # soft lifetime in ChildSa events (hard: +10 %)
    # Fake a NAT (§2.23 NAT_DETECTION_DESTINATION_IP mismatch) so clients always float to
    # 4500 and encapsulate ESP in UDP: the cluster's data plane steers ESP-in-UDP by SPI.
    force_udp_encap: bool = True
    retransmit_timeout_s: float = 2.0
    retransmit_tries: int = 5
    cookie_secret_lifetime_s: float = 300.0
    eap: EapConfig | None = None  # clients that send no AUTH authenticate with EAP
    # RFC 7383: announce IKEV2_FRAGMENTATION_SUPPORTED; our messages larger than
    # `fragment_mtu` (the whole IP datagram) go as fragments; what reassembly may hold
    fragmentation: bool = True
    fragment_mtu: int = 1280
    fragment_limits: FragmentLimits = field(default_factory=FragmentLimits)
    mobike: bool = True  # answer MOBIKE_SUPPORTED (RFC 4555): clients announce their moves
    # RFC 5685: answer the IKE_SA_INIT of clients that support redirect with REDIRECT to
    # this gateway (an address or FQDN) instead of serving them (a draining keyd)
    redirect_to: str | None = None
    # the proposals above, parsed: what select_proposal accepts (or the initiator offers)
    ike_suites: tuple[IkeProposal, ...] = field(init=False)
    esp_suites: tuple[EspProposal, ...] = field(init=False)

    def __post_init__(self) -> None:
        _check_fragment_mtu(self.fragment_mtu)
        creds = self.credentials
        conns = tuple(self.connections)
        if not conns:
            _ike_suites(self.ike_proposals)
            _esp_suites(self.esp_proposals)
            conns = legacy_connections(
                self.ike_proposals, self.esp_proposals, psk=creds.psk is not None,
                local_auth=LocalAuth.PUBKEY if creds.cert is not None else LocalAuth.PSK,
                dns=self.dns, dns_domains=self.dns_domains,
                protected_networks=self.protected_networks,
                eap=self.eap.method if self.eap is not None else None)
        if not conns:
            raise IkeUsageError("no connection: configure a PSK or a certificate")
        names = [c.name for c in conns]
        if len(set(names)) != len(names):
            raise IkeUsageError("connection names must be unique")
        if creds.cert is None and any(c.local_auth == LocalAuth.PUBKEY for c in conns):
            raise IkeUsageError("a connection with local_auth = pubkey needs a "
                                     "certificate")
        object.__setattr__(self, "connections", conns)
        object.__setattr__(self, "secrets", self.secrets.with_any_psk(creds.psk))
        object.__setattr__(self, "ike_suites", ike_suites_of(conns))
        object.__setattr__(self, "esp_suites", esp_suites_of(conns))


@dataclass(frozen=True, slots=True)
class InitiatorConfig:
    """The project's own initiator (tests, benchmark)."""

    identity: str
    credentials: Credentials
    remote_identity: str | None = None
    ike_proposals: Sequence[str] = ("aes128gcm16-prfsha256-x25519",)
    esp_proposals: Sequence[str] = ("aes128gcm16",)
    request_address: bool = True
    request_address6: bool = False  # INTERNAL_IP6_ADDRESS and INTERNAL_IP6_DNS as well
    ts_local: Sequence[str] = ("0.0.0.0/0",)
    ts_remote: Sequence[str] = ("0.0.0.0/0",)
    natt_port: int = 4500
    child_lifetime_s: int = 3600
    initial_contact: bool = True
    rfc7427: bool = True  # announce SIGNATURE_HASH_ALGORITHMS (else: classic auth methods)
    # EAP-MSCHAPv2 instead of AUTH (RFC 7296 §2.16): the EAP identity and its password; the
    # responder still proves itself with `credentials`
    eap_identity: str | None = None
    eap_password: str | None = None
    mobike: bool = True  # send MOBIKE_SUPPORTED (RFC 4555)
    redirect: bool = True  # send REDIRECT_SUPPORTED and follow REDIRECT (RFC 5685)
    retransmit_timeout_s: float = 2.0
    retransmit_tries: int = 5
    # RFC 7383, as for the responder: announce, and fragment what exceeds `fragment_mtu`
    fragmentation: bool = False
    fragment_mtu: int = 1280
    # the proposals above, parsed: what select_proposal accepts (or the initiator offers)
    ike_suites: tuple[IkeProposal, ...] = field(init=False)
    esp_suites: tuple[EspProposal, ...] = field(init=False)

    def __post_init__(self) -> None:
        _check_fragment_mtu(self.fragment_mtu)
        creds = self.credentials
        # only CAs: a client that proves itself by EAP and checks the gateway's certificate
        if creds.psk is None and creds.cert is None and not (
                self.eap_password is not None and creds.cas):
            raise IkeUsageError("configure a PSK or a certificate")
        object.__setattr__(self, "ike_suites", _ike_suites(self.ike_proposals))
        object.__setattr__(self, "esp_suites", _esp_suites(self.esp_proposals))
