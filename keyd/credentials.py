"""keyd's credentials, read from the configuration's files, and the `Responder` built on them.

This is the one place that reads the PSK, the secrets file, the gateway certificate and key,
the CA and the RADIUS secrets; the IKE core (`keyd/ike`) itself never touches a file.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from .config import (
    ConfigError,
    KeydConfig,
    read_eap_users,
    read_psk,
    read_public,
    read_secret,
)
from .eap import RadiusServer
from .ike.config import Credentials, EapConfig, ResponderConfig
from .ike.errors import IkeUsageError
from .ike.fragments import FragmentLimits
from .ike.responder import Responder
from .ike.secrets import Secrets
from .secrets import load_secrets


def _certificates(path: str, what: str) -> list[x509.Certificate]:
    data = read_public(path, what)
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        try:
            return [x509.load_der_x509_certificate(data)]
        except ValueError:
            raise ConfigError(f"{what} {path} holds no PEM or DER certificate") from None


def credentials(config: KeydConfig) -> Credentials:
    k = config.keyd
    psk = read_psk(k.psk_file) if k.psk_file else None
    cert = key = None
    chain: list[x509.Certificate] = []
    if k.cert_file:
        cert, *chain = _certificates(k.cert_file, "certificate file")
        assert k.key_file is not None  # config validation
        raw = read_secret(k.key_file, "private key file")
        try:
            loaded = load_pem_private_key(raw, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"private key file {k.key_file}: not an unencrypted PEM key "
                              f"({exc})") from None
        if not isinstance(loaded, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise ConfigError(f"private key file {k.key_file}: only RSA and ECDSA keys")
        key = loaded
    cas = tuple(_certificates(k.ca_file, "CA file")) if k.ca_file else ()
    try:
        return Credentials(psk=psk, cert=cert, private_key=key, cert_chain=tuple(chain), cas=cas)
    except IkeUsageError as exc:
        raise ConfigError(f"{config.source}: {exc}") from None


def radius_servers(config: KeydConfig) -> tuple[RadiusServer, ...]:
    k = config.keyd
    if not k.radius_servers or not k.radius_secret_file:
        return ()
    secret = read_secret(k.radius_secret_file, "RADIUS secret file").rstrip(b"\r\n")
    if not secret:
        raise ConfigError(f"RADIUS secret file {k.radius_secret_file} is empty")
    out = []
    for text in k.radius_servers:
        host, _, port = text.rpartition(":")
        out.append(RadiusServer(host, int(port), secret))
    return tuple(out)


def eap_config(config: KeydConfig) -> EapConfig | None:
    k = config.keyd
    if not k.eap:
        return None
    users = read_eap_users(k.eap_users_file) if k.eap_users_file else {}
    try:
        return EapConfig(k.eap, password_for=users.get if k.eap == "eap-mschapv2" else None,
                         radius_servers=radius_servers(config),
                         nas_identifier=k.nas_identifier, ask_identity=k.eap_identity == "ask")
    except IkeUsageError as exc:
        raise ConfigError(f"{config.source}: keyd.eap: {exc}") from None


def configured_secrets(config: KeydConfig) -> Secrets:
    """The secrets file's PSKs and EAP users (none without a file); ConfigError."""
    path = config.keyd.secrets_file
    return load_secrets(path) if path else Secrets()


def responder_config(config: KeydConfig, natt_port: int | None = None) -> ResponderConfig:
    k = config.keyd
    eap = eap_config(config)
    try:
        return ResponderConfig(
            identity=k.identity, credentials=credentials(config),
            ike_proposals=k.ike_proposals, esp_proposals=k.esp_proposals,
            protected_networks=k.protected_networks, dns=k.dns, dns_domains=k.dns_domains,
            connections=config.connections, secrets=configured_secrets(config),
            natt_port=natt_port if natt_port is not None else k.natt_port,
            half_open_cookie_threshold=k.half_open_cookie_threshold,
            ike_lifetime_s=k.ike_lifetime_s, child_lifetime_s=k.child_lifetime_s, eap=eap,
            fragmentation=k.fragmentation, fragment_mtu=k.fragment_mtu,
            fragment_limits=FragmentLimits(
                max_fragments=k.fragment_max_fragments,
                max_message_bytes=k.fragment_max_message_bytes,
                max_incomplete_per_sa=k.fragment_max_incomplete_per_sa,
                max_incomplete=k.fragment_max_incomplete, timeout_s=k.fragment_timeout_s),
            mobike=k.mobike, redirect_to=k.redirect_to or None)
    except IkeUsageError as exc:
        raise ConfigError(f"{config.source}: keyd proposals: {exc}") from None


def build_core(config: KeydConfig, natt_port: int | None = None) -> Responder:
    """The responder for `config`; ConfigError for unreadable or unusable credentials."""
    return Responder(responder_config(config, natt_port))
