"""Building and checking the proof of identity in IKE_AUTH (ID, CERT, AUTH payloads, §2.15),
for both roles."""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .auth import (
    SUPPORTED_HASHES,
    cert_public_key,
    identity_matches_cert,
    load_certificate,
    psk_auth,
    sign,
    verify_psk,
    verify_signature,
)
from .config import Credentials
from .constants import AuthMethod, CertEncoding, Notify
from .errors import IkeProtocolError
from .identity import Identity, identity_text
from .payloads import AuthPayload, CertPayload, NotifyPayload, Payload, notifies
from .transforms import Prf

# DER of our own certificates, by object (the same few are sent in every IKE_AUTH); the
# certificate is kept with its DER so its id cannot be reused while cached
_DER: dict[int, tuple[object, bytes]] = {}


def certificate_der(cert: x509.Certificate) -> bytes:
    got = _DER.get(id(cert))
    if got is None or got[0] is not cert:
        got = _DER[id(cert)] = (cert, cert.public_bytes(serialization.Encoding.DER))
    return got[1]


def own_proof(creds: Credentials, prf_alg: Prf, octets: bytes,
              peer_hashes: Sequence[int]) -> list[Payload]:
    """CERT payloads (if a certificate is configured) and AUTH over `octets`."""
    if creds.cert is not None and creds.private_key is not None:
        out: list[Payload] = [
            CertPayload(CertEncoding.X509_SIGNATURE, certificate_der(c))
            for c in (creds.cert, *creds.cert_chain)
        ]
        method, data = sign(creds.private_key, octets, peer_hashes)
        return [*out, AuthPayload(method, data)]
    assert creds.psk is not None
    return [AuthPayload(AuthMethod.PSK, psk_auth(prf_alg, creds.psk, octets))]


def check_proof(creds: Credentials, prf_alg: Prf, octets: bytes, peer_id: Identity,
                auth: AuthPayload, payloads: Sequence[Payload]) -> str:
    """Verify the peer's AUTH (PSK, or a certificate chaining to our CAs that names the
    peer's ID); returns the peer's identity as text. Failures: AUTHENTICATION_FAILED."""
    if auth.method == AuthMethod.PSK:
        if creds.psk is None:
            raise IkeProtocolError("PSK authentication is not configured",
                                      Notify.AUTHENTICATION_FAILED)
        verify_psk(prf_alg, creds.psk, octets, auth.data)
        return identity_text(peer_id)
    certs = [load_certificate(p.data) for p in payloads
             if isinstance(p, CertPayload) and p.encoding == CertEncoding.X509_SIGNATURE]
    if not certs or not creds.cas:
        raise IkeProtocolError("no certificate, or no CA to check it against",
                                  Notify.AUTHENTICATION_FAILED)
    creds.trust.verify_chain(certs[0], certs[1:], creds.clock())
    if not identity_matches_cert(peer_id, certs[0]):
        raise IkeProtocolError("identity is not in the certificate",
                                  Notify.AUTHENTICATION_FAILED)
    verify_signature(cert_public_key(certs[0]), auth.method, auth.data, octets)
    return identity_text(peer_id, certs[0])


def hash_algorithms(payloads: Sequence[Payload]) -> tuple[int, ...]:
    """RFC 7427 §4: the SIGNATURE_HASH_ALGORITHMS notify is a list of 16-bit numbers."""
    out: list[int] = []
    for n in notifies(payloads, Notify.SIGNATURE_HASH_ALGORITHMS):
        out += [int.from_bytes(n.data[i : i + 2], "big") for i in range(0, len(n.data) - 1, 2)]
    return tuple(out)


def hash_algorithms_notify() -> NotifyPayload:
    """What we announce: the hashes we sign and verify with (RFC 7427 §4)."""
    return NotifyPayload(Notify.SIGNATURE_HASH_ALGORITHMS,
                         b"".join(h.to_bytes(2, "big") for h in SUPPORTED_HASHES))
