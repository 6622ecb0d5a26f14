"""docs/clients.md cannot rot: every ```toml block on the page is read by keyd's own readers
(the [keyd] section, each `[[keyd.connections]]` block with it, the secrets file), all the
connections together build the responder keyd would run (certificate, key, CA, secrets and
RADIUS secret read from real files), and each client the page describes — as the proposals
it sends, the identity it claims and the proof it offers — gets the connection the page
says it gets, with its ESP proposals accepted there."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.pki import CertAuthority
from keyd.config import KeydConfig, load_config
from keyd.credentials import responder_config
from keyd.ike.connections import Connection, ike_suites_of, select_connection
from keyd.ike.constants import AuthMethod, ProtocolId
from keyd.ike.proposals import parse_esp_proposals, parse_ike_proposals, select_proposal
from keyd.ike.transforms import IkeSuite
from keyd.secrets import load_secrets

DOC = Path(__file__).resolve().parents[3] / "docs" / "clients.md"
ETC = "/etc/ipsec-cluster/"
CONNECTIONS = ["shared-secret", "certificates", "app-eap-tls", "eap-users", "windows-legacy"]


def toml_blocks() -> list[str]:
    return [b.split("```")[0] for b in DOC.read_text().split("```toml\n")[1:]]


def head() -> str:
    (block,) = [b for b in toml_blocks() if b.startswith("[keyd]\n")]
    return block


def connection_blocks() -> list[str]:
    return [b for b in toml_blocks() if b.startswith("[[keyd.connections]]\n")]


def secrets_blocks() -> list[str]:
    return [b for b in toml_blocks() if b.startswith(("[[psk]]\n", "[[eap]]\n"))]


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """The files the page's [keyd] names, under tmp_path instead of /etc/ipsec-cluster."""
    ca = CertAuthority.create("Example CA", kind="rsa")
    ca.write_pem(tmp_path / "ca.pem", tmp_path / "ca-key.pem")
    ca.issue("vpn.example.net", ["vpn.example.net"], kind="rsa").write_pem(
        tmp_path / "gateway.pem", tmp_path / "gateway-key.pem")
    for name, text in (("secrets.toml", "\n".join(secrets_blocks())),
                       ("radius-secret", "a RADIUS shared secret\n")):
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o600)
    (tmp_path / "gateway-key.pem").chmod(0o600)
    return tmp_path


def load(site: Path, *blocks: str) -> KeydConfig:
    path = site / "keyd.toml"
    path.write_text("\n".join([head(), *blocks]).replace(ETC, f"{site}/"))
    return load_config(path)


def test_every_toml_block_is_one_keyd_reads() -> None:
    blocks = toml_blocks()
    assert len(blocks) == 1 + len(connection_blocks()) + len(secrets_blocks())
    assert len(connection_blocks()) == len(CONNECTIONS)


@pytest.mark.parametrize("index", range(len(CONNECTIONS)))
def test_each_connection_loads_with_the_gateway_section(site: Path, index: int) -> None:
    config = load(site, connection_blocks()[index])
    assert [c.name for c in config.connections] == [CONNECTIONS[index]]
    responder_config(config)   # reads the certificate, key, CA, secrets, RADIUS secret


def test_all_connections_in_page_order_build_keyds_responder(site: Path) -> None:
    config = load(site, *connection_blocks())
    assert [c.name for c in config.connections] == CONNECTIONS
    responder = responder_config(config)
    assert [c.name for c in responder.connections] == CONNECTIONS
    assert responder.eap is not None and responder.eap.radius_servers
    secrets = load_secrets(str(site / "secrets.toml"))
    assert secrets.psk("alice@psk.example.org") == b"alice's long random secret"
    assert secrets.psk("bob@psk.example.org") == b"bob's long random secret"
    assert secrets.psk("carol") is None
    assert secrets.eap_password("carol") == "carol's password"
    assert secrets.eap_password("ACME\\dave") == "dave's password"


# What each client sends, in keyd's proposal syntax (one string per proposal, the client's
# order; algorithms keyd does not implement — MODP1536, AES-XCBC, DES, NULL — left out, as
# keyd skips them in an offer), the IKE identity it claims and its proof (None: EAP).
WINDOWS_ESP = ["aes256-aes128-3des-sha1"]
IOS_IKE = ["aes256-sha256-prfsha256-modp2048", "aes256-sha256-prfsha256-ecp256",
           "aes128-sha1-prfsha1-modp1024", "3des-sha1-prfsha1-modp1024"]
IOS_ESP = ["aes256-sha256-noesn", "aes128-sha1-noesn", "3des-sha1-noesn"]
ANDROID_IKE = [
    "aes256ctr-aes256-aes192ctr-aes192-aes128ctr-aes128-sha512-sha384-sha256-aescmac"
    "-prfsha512-prfsha384-prfsha256-prfaescmac-prfsha1-modp4096-x25519-modp3072-modp2048",
    "chacha20poly1305-aes256gcm16-aes256gcm12-aes256gcm8-aes192gcm16-aes192gcm12-aes192gcm8"
    "-aes128gcm16-aes128gcm12-aes128gcm8-prfsha512-prfsha384-prfsha256-prfaescmac-prfsha1"
    "-modp4096-x25519-modp3072-modp2048",
]
ANDROID_ESP = [
    "aes256ctr-aes256-aes192ctr-aes192-aes128ctr-aes128-sha512-sha384-sha256-aescmac-noesn",
    "chacha20poly1305-aes256gcm16-aes256gcm12-aes256gcm8-aes128gcm16-aes128gcm12-aes128gcm8"
    "-noesn",
]
STRONGSWAN_IKE = ["aes128gcm16-prfsha256-x25519"]
STRONGSWAN_ESP = ["aes128gcm16"]

CLIENTS = [
    # (client, IKE offers, ESP offers, IDi, proof, the connection the page names)
    ("windows eap-mschapv2, NegotiateDH2048_AES256", ["aes256-sha1-sha256-sha384-modp2048"],
     WINDOWS_ESP, "198.51.100.7", None, "eap-users"),
    ("windows 10 eap-mschapv2, no registry value",
     ["3des-aes128-aes192-aes256-sha1-sha256-sha384-modp1024"], WINDOWS_ESP,
     "198.51.100.7", None, "windows-legacy"),
    ("windows 11 eap-mschapv2, no registry value",
     ["aes128gcm16-aes256gcm16-prfsha1-prfsha256-prfsha384-modp1024",
      "3des-aes128-aes192-aes256-sha1-sha256-sha384-modp1024"], WINDOWS_ESP,
     "198.51.100.7", None, "windows-legacy"),
    ("windows machine certificate", ["aes256-sha1-sha256-sha384-modp2048"], WINDOWS_ESP,
     "C=US, O=Example, CN=desktop-7", AuthMethod.RSA_SIG, "certificates"),
    ("ios username", IOS_IKE, IOS_ESP, "carol", None, "eap-users"),
    ("macos shared secret", [IOS_IKE[0], *IOS_IKE[2:]], IOS_ESP, "alice@psk.example.org",
     AuthMethod.PSK, "shared-secret"),
    ("ios certificate", IOS_IKE, IOS_ESP, "erin@example.org", AuthMethod.DIGITAL_SIGNATURE,
     "certificates"),
    ("android mschapv2", ANDROID_IKE, ANDROID_ESP, "carol@example.org", None, "eap-users"),
    ("android psk", ANDROID_IKE, ANDROID_ESP, "bob@psk.example.org", AuthMethod.PSK,
     "shared-secret"),
    ("android rsa", ANDROID_IKE, ANDROID_ESP, "frank@example.org", AuthMethod.RSA_SIG,
     "certificates"),
    ("strongswan app eap-tls", STRONGSWAN_IKE, STRONGSWAN_ESP, "phone1@devices.example.org",
     None, "app-eap-tls"),
    ("strongswan eap-mschapv2", STRONGSWAN_IKE, STRONGSWAN_ESP, "198.51.100.20", None,
     "eap-users"),
    ("strongswan shared secret", ["default"], ["default"], "alice@psk.example.org",
     AuthMethod.PSK, "shared-secret"),
]


def negotiate(connections: tuple[Connection, ...], ike: list[str], esp: list[str],
              identity: str, proof: int | None) -> str:
    """IKE_SA_INIT against every connection's proposals (the client's KE payload in its first
    proposal's first group), then IKE_AUTH's choice of connection and its Child SA."""
    offers = [p for text in ike for p in parse_ike_proposals(text)]
    ike_offer = [p.to_proposal(n) for n, p in enumerate(offers, 1)]
    _, suite = select_proposal(ike_offer, ike_suites_of(connections), ProtocolId.IKE,
                               offers[0].dhs[0])
    assert isinstance(suite, IkeSuite)
    chosen = select_connection(connections, identity, proof, suite)
    assert chosen.connection is not None, chosen.reason
    esp_offer = [p.to_proposal(n, b"\0\0\0\1", with_dh=False)
                 for n, p in enumerate((p for t in esp for p in parse_esp_proposals(t)), 1)]
    select_proposal(esp_offer, chosen.connection.esp_suites, ProtocolId.ESP, None,
                    include_dh=False)
    return chosen.connection.name


@pytest.mark.parametrize(("client", "ike", "esp", "identity", "proof", "expected"), CLIENTS,
                         ids=[c[0] for c in CLIENTS])
def test_each_client_gets_the_connection_the_page_names(
        site: Path, client: str, ike: list[str], esp: list[str], identity: str,
        proof: int | None, expected: str) -> None:
    config = load(site, *connection_blocks())
    assert negotiate(config.connections, ike, esp, identity, proof) == expected


def test_a_client_of_the_wrong_kind_gets_no_shared_secret_connection(site: Path) -> None:
    """An identity under psk.example.org that signs is not a shared-secret user."""
    config = load(site, *connection_blocks())
    assert negotiate(config.connections, IOS_IKE, IOS_ESP, "alice@psk.example.org",
                     AuthMethod.RSA_SIG) == "certificates"
