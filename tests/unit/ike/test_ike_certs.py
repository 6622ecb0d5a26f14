"""Certificate authentication: RSA and ECDSA, RFC 7427 and the classic methods, chains."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from ikepair import CERT_TIME, CLIENT, VIP, Clock, Pki, Side, make_pki, run

from keyd.ike import (
    AuthenticationFailed,
    ChildSaEstablished,
    Credentials,
    ExchangeFailed,
    IkeSaEstablished,
    Initiator,
    InitiatorConfig,
    Responder,
    ResponderConfig,
)
from keyd.ike.auth import sign, verify_signature
from keyd.ike.constants import AuthMethod, HashAlgorithm, Notify
from keyd.ike.errors import IkeProtocolError


def _key(kind: str) -> Any:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP384R1() if kind == "ecdsa384" else ec.SECP256R1())


def _pair(pki: Pki, kind: str, rfc7427: bool = True, client_id: str = "client@example.net",
          client_san: str = "client@example.net", trust: Pki | None = None,
          when: datetime.datetime = CERT_TIME, chain: tuple[x509.Certificate, ...] = (),
          issuer: tuple[x509.Certificate, Any] | None = None) -> tuple[Side, Side]:
    gw_key, cl_key = _key(kind), _key(kind)
    gw = pki.issue("vpn.example.net", [x509.DNSName("vpn.example.net")], gw_key)
    cl = pki.issue("client", [x509.RFC822Name(client_san)], cl_key, issuer=issuer)
    server = Responder(ResponderConfig(
        identity="vpn.example.net",
        credentials=Credentials(cert=gw, private_key=gw_key, cas=((trust or pki).ca,),
                                clock=lambda: when),
        protected_networks=["10.20.0.0/16"]))
    client = Initiator(InitiatorConfig(
        identity=client_id, rfc7427=rfc7427,
        credentials=Credentials(cert=cl, private_key=cl_key, cas=(pki.ca,), cert_chain=chain,
                                clock=lambda: when)))
    return Side(client), Side(server)


def _go(client: Side, server: Side) -> None:
    clock = Clock()
    client.endpoint.connect(CLIENT, VIP, clock.now)
    run(client, server, clock)


@pytest.mark.parametrize("kind", ["rsa", "ecdsa", "ecdsa384"])
@pytest.mark.parametrize("rfc7427", [True, False])
def test_certificate_auth(kind: str, rfc7427: bool) -> None:
    client, server = _pair(make_pki(), kind, rfc7427)
    _go(client, server)
    est = server.of(IkeSaEstablished)
    assert est and est[0].identity == "client@example.net"
    assert client.of(IkeSaEstablished)[0].identity == "vpn.example.net"
    assert server.of(ChildSaEstablished)
    sa = server.endpoint.export_ike_sa(est[0].ike_sa_id)
    assert bool(sa["peer_hashes"]) == rfc7427


def test_untrusted_ca_fails() -> None:
    client, server = _pair(make_pki(), "ecdsa", trust=make_pki())
    _go(client, server)
    assert server.of(AuthenticationFailed)
    assert client.of(ExchangeFailed)[0].notify == Notify.AUTHENTICATION_FAILED


def test_identity_must_be_in_the_certificate() -> None:
    client, server = _pair(make_pki(), "ecdsa", client_san="someone.else@example.net")
    _go(client, server)
    assert "identity" in server.of(AuthenticationFailed)[0].reason


def test_expired_certificate_fails() -> None:
    later = CERT_TIME + datetime.timedelta(days=400)
    client, server = _pair(make_pki(), "ecdsa", when=later)
    _go(client, server)
    assert server.of(AuthenticationFailed)


def test_intermediate_ca_chain_and_dn_identity() -> None:
    pki = make_pki("ecdsa")
    ikey = ec.generate_private_key(ec.SECP256R1())
    inter = pki.issue("Intermediate", [], ikey, ca=True)
    client, server = _pair(pki, "ecdsa", client_id="O=ipsec-cluster test, CN=client",
                           chain=(inter,), issuer=(inter, ikey))
    _go(client, server)
    est = server.of(IkeSaEstablished)
    assert est and est[0].identity == "O=ipsec-cluster test, CN=client"
    # without the intermediate the chain is broken
    client, server = _pair(pki, "ecdsa", issuer=(inter, ikey))
    _go(client, server)
    assert server.of(AuthenticationFailed)


@pytest.mark.parametrize("key,method", [
    (rsa.generate_private_key(public_exponent=65537, key_size=2048), AuthMethod.RSA_SIG),
    (ec.generate_private_key(ec.SECP256R1()), AuthMethod.ECDSA_SHA256_P256),
    (ec.generate_private_key(ec.SECP384R1()), AuthMethod.ECDSA_SHA384_P384),
    (ec.generate_private_key(ec.SECP521R1()), AuthMethod.ECDSA_SHA512_P521),
])
def test_sign_verify_methods(key: Any, method: int) -> None:
    octets = b"signed octets"
    got_method, data = sign(key, octets, [])
    assert got_method == method
    verify_signature(key.public_key(), got_method, data, octets)
    m14, d14 = sign(key, octets, [HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384,
                                  HashAlgorithm.SHA2_512])
    assert m14 == AuthMethod.DIGITAL_SIGNATURE
    verify_signature(key.public_key(), m14, d14, octets)
    for bad_method, bad in ((got_method, data[:-1] + bytes([data[-1] ^ 1])),
                            (m14, d14[:5]), (m14, b""), (99, data)):
        with pytest.raises(IkeProtocolError) as e:
            verify_signature(key.public_key(), bad_method, bad, octets)
        assert e.value.notify == Notify.AUTHENTICATION_FAILED
