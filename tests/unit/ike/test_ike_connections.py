"""Identity patterns, secrets by identity and connection selection (keyd/ike/connections.py,
keyd/ike/secrets.py): pure matching, no I/O."""

from __future__ import annotations

import pytest

from keyd.ike.connections import (
    Connection,
    IdentityPattern,
    LocalAuth,
    RemoteAuth,
    ike_suites_of,
    legacy_connections,
    select_connection,
)
from keyd.ike.constants import AuthMethod
from keyd.ike.errors import IkeUsageError
from keyd.ike.proposals import parse_ike_proposals, parse_ike_suite
from keyd.ike.secrets import Secrets

GCM = "aes128gcm16-prfsha256-x25519"
CBC = "aes256-sha384-ecp384"


@pytest.mark.parametrize(("pattern", "identity", "expected"), [
    ("%any", "anyone", True),
    ("%any", "CN=x, O=y", True),
    ("alice@example.org", "alice@example.org", True),
    ("alice@example.org", "ALICE@Example.ORG", True),
    ("alice@example.org", "alice@example.org.evil", False),
    ("alice@example.org", "xalice@example.org", False),
    ("*@example.org", "bob@example.org", True),
    ("*@example.org", "bob@sub.example.org", False),
    ("*@example.org", "bob@example.org.evil", False),
    ("*.clients.example", "a.clients.example", True),
    ("*.clients.example", "clients.example", False),
    ("C=CH, O=Example, CN=*", "C=CH, O=Example, CN=carol", True),
    ("C=CH, O=Example, CN=*", "C=DE, O=Example, CN=carol", False),
    ("a+b@example.org", "a+b@example.org", True),       # regex characters are literal
    ("a.b@example.org", "axb@example.org", False),
    ("192.0.2.7", "192.0.2.7", True),
])
def test_identity_patterns(pattern: str, identity: str, expected: bool) -> None:
    assert IdentityPattern(pattern).matches(identity) is expected


def test_empty_pattern_is_refused() -> None:
    with pytest.raises(IkeUsageError):
        IdentityPattern("  ")


def conn(name: str, ids: tuple[str, ...] = ("%any",), remote: str = "psk",
         local: str = "pubkey", ike: tuple[str, ...] = (GCM,)) -> Connection:
    return Connection(name, ike, ("aes128gcm16",), remote_ids=ids,
                      remote_auth=RemoteAuth(remote), local_auth=LocalAuth(local))


CONNS = [
    conn("shared", ("*@shared.example",), "psk", "psk"),
    conn("eap", ("*@example.org",), "eap-mschapv2"),
    conn("certs", ("%any",), "pubkey"),
    conn("cbc-only", ("*@cbc.example",), "psk", ike=(CBC,)),
    conn("psk", ("%any",), "psk"),
]
GCM_SUITE = parse_ike_suite(GCM)
CBC_SUITE = parse_ike_suite(CBC)


@pytest.mark.parametrize(("identity", "method", "suite", "expected"), [
    ("alice@shared.example", AuthMethod.PSK, GCM_SUITE, "shared"),     # first match wins
    ("alice@shared.example", AuthMethod.DIGITAL_SIGNATURE, GCM_SUITE, "certs"),
    ("carol@example.org", None, GCM_SUITE, "eap"),                      # no AUTH: EAP
    ("carol@example.org", AuthMethod.PSK, GCM_SUITE, "psk"),
    ("carol@example.org", AuthMethod.ECDSA_SHA256_P256, GCM_SUITE, "certs"),
    ("dan@cbc.example", AuthMethod.PSK, CBC_SUITE, "cbc-only"),
    ("dan@cbc.example", AuthMethod.PSK, GCM_SUITE, "psk"),   # cbc-only refuses GCM
    ("erin@elsewhere", AuthMethod.PSK, GCM_SUITE, "psk"),
])
def test_first_connection_that_accepts_identity_auth_and_suite(
        identity: str, method: int | None, suite: object, expected: str) -> None:
    chosen = select_connection(CONNS, identity, method, suite)  # type: ignore[arg-type]
    assert chosen.connection is not None and chosen.connection.name == expected


def test_no_connection_says_why() -> None:
    only = [conn("shared", ("*@shared.example",), "psk", "psk"),
            conn("cbc", ("*@cbc.example",), "psk", ike=(CBC,))]
    by_id = select_connection(only, "mallory@evil.example", AuthMethod.PSK, GCM_SUITE)
    assert by_id.connection is None and "no connection accepts" in by_id.reason
    by_auth = select_connection(only, "a@shared.example", None, GCM_SUITE)
    assert by_auth.connection is None and "eap authentication is not accepted" in by_auth.reason
    by_suite = select_connection(only, "a@cbc.example", AuthMethod.PSK, GCM_SUITE)
    assert by_suite.connection is None and "is not one of connections cbc" in by_suite.reason


def test_ike_sa_init_offers_the_union_in_connection_order() -> None:
    assert ike_suites_of(CONNS) == parse_ike_proposals(GCM) + parse_ike_proposals(CBC)


def test_local_psk_needs_remote_psk() -> None:
    with pytest.raises(IkeUsageError, match="local_auth = psk needs remote_auth = psk"):
        conn("x", remote="pubkey", local="psk")


def test_legacy_connections() -> None:
    both = legacy_connections((GCM,), ("aes128gcm16",), psk=True, local_auth=LocalAuth.PUBKEY)
    assert [(c.name, c.remote_auth) for c in both] == [
        ("default-pubkey", RemoteAuth.PUBKEY), ("default-psk", RemoteAuth.PSK)]
    psk_only = legacy_connections((GCM,), ("aes128gcm16",), psk=True, local_auth=LocalAuth.PSK)
    assert [c.name for c in psk_only] == ["default-psk"]
    assert psk_only[0].local_auth == LocalAuth.PSK


def test_secrets_exact_before_wildcards_in_file_order() -> None:
    s = Secrets(psks=(("*@example.org", b"domain"), ("alice@example.org", b"alice"),
                      ("*", b"star"), ("%any", b"any")),
                eap_users={"Carol@Example.org": "pw"})
    assert s.psk("alice@example.org") == b"alice"
    assert s.psk("ALICE@example.org") == b"alice"
    assert s.psk("bob@example.org") == b"domain"
    assert s.psk("bob@elsewhere") == b"star"
    assert Secrets(psks=(("*@example.org", b"d"),)).psk("bob@elsewhere") is None
    assert s.eap_password("carol@example.org") == "pw"
    assert s.eap_password("dave@example.org") is None


def test_legacy_psk_is_the_last_resort() -> None:
    s = Secrets(psks=(("alice@example.org", b"alice"),)).with_any_psk(b"legacy")
    assert s.psk("alice@example.org") == b"alice"
    assert s.psk("anyone") == b"legacy"
    assert Secrets().with_any_psk(None).psk("anyone") is None
