"""IKE_AUTH on connections, two endpoints in one process: PSKs by identity (both ways on
`local_auth = psk`), refusals counted by cause, the connection's offer in CFG_REPLY, its
policy on the Child SA, the connection kept across export/import; secrets replaced at run
time."""

from __future__ import annotations

import ipaddress
from typing import Any

from ikepair import CLIENT, PSK, VIP, Clock, Side, make_pki, run

from keyd.ike import Credentials, Initiator, InitiatorConfig, Responder, ResponderConfig
from keyd.ike.connections import Connection, LocalAuth, RemoteAuth
from keyd.ike.constants import AuthMethod, CfgAttr
from keyd.ike.events import AuthenticationFailed, ChildSaEstablished, IkeSaEstablished
from keyd.ike.message import pull_message
from keyd.ike.payloads import AuthPayload, CertPayload, CpPayload
from keyd.ike.protect import open_sk
from keyd.ike.secrets import Secrets

IKE, ESP = "aes128gcm16-prfsha256-x25519", "aes128gcm16"
ALICE, BOB = b"alice's own key", b"bob's own key"
SECRETS = Secrets(psks=(("alice@example.org", ALICE), ("bob@example.org", BOB),
                        ("*.devices.example", PSK)))


def shared(**kw: Any) -> Connection:
    return Connection("shared", (IKE,), (ESP,), remote_ids=("*@example.org",),
                      remote_auth=RemoteAuth.PSK, local_auth=LocalAuth.PSK,
                      dns=("10.20.0.53",), dns_domains=("corp.example.org",),
                      protected_networks=("10.20.0.0/16", "10.30.0.0/24"), policy="split",
                      pool="10.98.0.0/24", **kw)


def devices() -> Connection:
    return Connection("devices", (IKE,), (ESP,), remote_ids=("*.devices.example",),
                      remote_auth=RemoteAuth.PSK, local_auth=LocalAuth.PUBKEY)


def responder(secrets: Secrets = SECRETS) -> Side:
    pki = make_pki()
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509 import DNSName
    key = ec.generate_private_key(ec.SECP256R1())
    cert = pki.issue("vpn.example.net", [DNSName("vpn.example.net")], key)
    return Side(Responder(ResponderConfig(
        identity="vpn.example.net", credentials=Credentials(cert=cert, private_key=key),
        connections=(shared(), devices()), secrets=secrets)))


def client(identity: str, psk: bytes) -> Side:
    return Side(Initiator(InitiatorConfig(identity=identity, credentials=Credentials(psk=psk),
                                          ike_proposals=[IKE], esp_proposals=[ESP])))


def connect(c: Side, s: Side) -> Clock:
    clock = Clock()
    c.endpoint.connect(CLIENT, VIP, clock.now)
    run(c, s, clock, pool="10.98.0.5")
    return clock


def reply_payloads(server: Side) -> list[Any]:
    """The server's last answer (IKE_AUTH), opened with its own keys."""
    core = server.endpoint
    [sa_id] = core.ike_sa_ids()
    sa = core._sas[sa_id]
    msg, sk = pull_message(sa.last_response)
    assert sk is not None
    return open_sk(msg, sk, core._keys_out(sa))


def test_psk_both_ways_with_the_identitys_own_key() -> None:
    c, s = client("alice@example.org", ALICE), responder()
    connect(c, s)
    assert isinstance(c.endpoint, Initiator) and c.endpoint.virtual_ip == "10.98.0.5"
    [est] = s.of(IkeSaEstablished)
    assert est.identity == "alice@example.org" and est.connection == "shared"
    payloads = reply_payloads(s)
    auth = next(p for p in payloads if isinstance(p, AuthPayload))
    assert auth.method == AuthMethod.PSK
    assert not [p for p in payloads if isinstance(p, CertPayload)]
    cp = next(p for p in payloads if isinstance(p, CpPayload))
    attrs = list(cp.attributes)
    assert (CfgAttr.INTERNAL_DNS_DOMAIN, b"corp.example.org") in attrs
    subnets = [v for t, v in attrs if t == CfgAttr.INTERNAL_IP4_SUBNET]
    assert subnets == [ipaddress.ip_address("10.20.0.0").packed + bytes([255, 255, 0, 0]),
                       ipaddress.ip_address("10.30.0.0").packed + bytes([255, 255, 255, 0])]
    [child] = s.of(ChildSaEstablished)
    assert child.child.policy == "split"
    assert child.child.ts_local == ("10.20.0.0/16", "10.30.0.0/24")
    # another instance continues on the same connection
    state = s.endpoint.export_ike_sa(est.ike_sa_id)
    assert state["connection"] == "shared"
    other = responder()
    other.endpoint.import_ike_sa(state)
    assert other.endpoint.connection_of(other.endpoint._sas[est.ike_sa_id]).name == "shared"


def test_gateway_by_certificate_sends_it_without_certreq() -> None:
    c, s = client("phone.devices.example", PSK), responder()
    clock = Clock()
    c.endpoint.connect(CLIENT, VIP, clock.now)
    run(c, s, clock, pool="10.98.0.5")
    [est] = s.of(IkeSaEstablished)
    assert est.connection == "devices"
    payloads = reply_payloads(s)   # the client sent no CERTREQ (it has no CAs)
    assert [p for p in payloads if isinstance(p, CertPayload)]
    assert next(p for p in payloads if isinstance(p, AuthPayload)).method != AuthMethod.PSK


def refused(identity: str, psk: bytes, secrets: Secrets = SECRETS) -> tuple[str, Side]:
    c, s = client(identity, psk), responder(secrets)
    connect(c, s)
    [failed] = s.of(AuthenticationFailed)
    assert not s.of(IkeSaEstablished) and not s.endpoint.ike_sa_ids()
    assert s.endpoint.counters.auth_failures[failed.cause] == 1
    assert s.endpoint.counters.errors["AUTHENTICATION_FAILED"] == 1
    assert ALICE.decode() not in failed.reason and BOB.decode() not in failed.reason
    return failed.cause, s


def test_another_identitys_psk_is_a_mismatch() -> None:
    cause, _ = refused("bob@example.org", ALICE)
    assert cause == "psk_mismatch"


def test_identity_without_a_secret_is_unknown() -> None:
    cause, _ = refused("mallory@example.org", ALICE)
    assert cause == "unknown_identity"


def test_identity_no_connection_accepts() -> None:
    cause, s = refused("alice@elsewhere.example", ALICE)
    assert cause == "no_matching_connection"
    assert "no connection accepts" in s.of(AuthenticationFailed)[0].reason


def test_new_secrets_apply_to_the_next_ike_auth() -> None:
    c, s = client("alice@example.org", ALICE), responder()
    connect(c, s)
    assert s.of(IkeSaEstablished)
    core = s.endpoint
    assert isinstance(core, Responder)
    core.use_secrets(Secrets(psks=(("alice@example.org", b"rotated"),)))
    assert len(core.ike_sa_ids()) == 1          # nothing established is touched
    assert core.secrets.psk("alice@example.org") == b"rotated"
    old = client("alice@example.org", ALICE)
    clock = Clock()
    old.endpoint.connect(("192.0.2.11", 500), VIP, clock.now)
    run(old, s, clock, pool="10.98.0.6")
    assert s.of(AuthenticationFailed)[-1].cause == "psk_mismatch"
