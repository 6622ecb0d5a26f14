"""Authentication (RFC 7296 §2.15): shared keys, and signatures with RSA and ECDSA
certificates — the classic methods 1 (RSA, SHA-1), 9/10/11 (ECDSA, RFC 4754) and RFC 7427
digital signatures (method 14). Certificates must chain to a configured CA."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import constant_time, hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from .constants import AuthMethod, CertEncoding, HashAlgorithm, IdType, Notify
from .errors import IkeProtocolError
from .identity import Identity
from .keys import prf
from .payloads import CertReqPayload
from .transforms import Prf

KEY_PAD = b"Key Pad for IKEv2"  # §2.15
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

# RFC 7427 Appendix A: DER AlgorithmIdentifiers, by (key kind, hash)
_RSA_OID = bytes.fromhex("2a864886f70d0101")
_ECDSA_OID = bytes.fromhex("2a8648ce3d0403")
_ALG_IDS: dict[tuple[str, int], bytes] = {
    ("rsa", HashAlgorithm.SHA2_256): bytes.fromhex("300d06092a864886f70d01010b0500"),
    ("rsa", HashAlgorithm.SHA2_384): bytes.fromhex("300d06092a864886f70d01010c0500"),
    ("rsa", HashAlgorithm.SHA2_512): bytes.fromhex("300d06092a864886f70d01010d0500"),
    ("ecdsa", HashAlgorithm.SHA2_256): bytes.fromhex("300a06082a8648ce3d040302"),
    ("ecdsa", HashAlgorithm.SHA2_384): bytes.fromhex("300a06082a8648ce3d040303"),
    ("ecdsa", HashAlgorithm.SHA2_512): bytes.fromhex("300a06082a8648ce3d040304"),
}
_OID_TO_SCHEME = {
    _RSA_OID + b"\x0b": ("rsa", HashAlgorithm.SHA2_256),
    _RSA_OID + b"\x0c": ("rsa", HashAlgorithm.SHA2_384),
    _RSA_OID + b"\x0d": ("rsa", HashAlgorithm.SHA2_512),
    _RSA_OID + b"\x05": ("rsa", HashAlgorithm.SHA1),
    _ECDSA_OID + b"\x02": ("ecdsa", HashAlgorithm.SHA2_256),
    _ECDSA_OID + b"\x03": ("ecdsa", HashAlgorithm.SHA2_384),
    _ECDSA_OID + b"\x04": ("ecdsa", HashAlgorithm.SHA2_512),
}
_HASHES: dict[int, type[hashes.HashAlgorithm]] = {
    HashAlgorithm.SHA1: hashes.SHA1,
    HashAlgorithm.SHA2_256: hashes.SHA256,
    HashAlgorithm.SHA2_384: hashes.SHA384,
    HashAlgorithm.SHA2_512: hashes.SHA512,
}
# RFC 4754: method -> (curve name, hash, size of r and s)
_ECDSA_CLASSIC = {
    AuthMethod.ECDSA_SHA256_P256: ("secp256r1", hashes.SHA256, 32),
    AuthMethod.ECDSA_SHA384_P384: ("secp384r1", hashes.SHA384, 48),
    AuthMethod.ECDSA_SHA512_P521: ("secp521r1", hashes.SHA512, 66),
}
SUPPORTED_HASHES = (HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_512)


def _fail(reason: str) -> IkeProtocolError:
    return IkeProtocolError(reason, Notify.AUTHENTICATION_FAILED)


def signed_octets(
    real_message: bytes, nonce: bytes, prf_alg: Prf, sk_p: bytes, identity: Identity
) -> bytes:
    """§2.15: RealMessage | Nonce of the other side | prf(SK_p, ID')."""
    return real_message + nonce + prf(prf_alg, sk_p, identity.body())


def psk_auth(prf_alg: Prf, psk: bytes, octets: bytes) -> bytes:
    """§2.15: AUTH = prf(prf(Shared Secret, "Key Pad for IKEv2"), <signed octets>)."""
    return prf(prf_alg, prf(prf_alg, psk, KEY_PAD), octets)


def verify_psk(prf_alg: Prf, psk: bytes, octets: bytes, auth: bytes) -> None:
    if not constant_time.bytes_eq(psk_auth(prf_alg, psk, octets), auth):
        raise _fail("shared key AUTH mismatch")


def _kind(key: PrivateKey | PublicKey) -> str:
    return "rsa" if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey) else "ecdsa"


def _default_hash(key: PrivateKey | PublicKey) -> int:
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return {384: HashAlgorithm.SHA2_384, 521: HashAlgorithm.SHA2_512}.get(
            key.curve.key_size, HashAlgorithm.SHA2_256)
    return HashAlgorithm.SHA2_256


def sign(key: PrivateKey, octets: bytes, peer_hashes: Sequence[int]) -> tuple[int, bytes]:
    """Sign with RFC 7427 when the peer announced hash algorithms we share, else with the
    classic method for the key. Returns (auth method, AUTH data)."""
    kind = _kind(key)
    wanted = _default_hash(key)
    usable = [h for h in (wanted, *SUPPORTED_HASHES) if h in peer_hashes]
    if usable:
        h = usable[0]
        if isinstance(key, rsa.RSAPrivateKey):
            sig = key.sign(octets, padding.PKCS1v15(), _HASHES[h]())
        else:
            sig = key.sign(octets, ec.ECDSA(_HASHES[h]()))  # DER Ecdsa-Sig-Value (§3)
        alg = _ALG_IDS[(kind, h)]
        return AuthMethod.DIGITAL_SIGNATURE, bytes([len(alg)]) + alg + sig
    if isinstance(key, rsa.RSAPrivateKey):
        return AuthMethod.RSA_SIG, key.sign(octets, padding.PKCS1v15(), hashes.SHA1())
    for method, (curve, hash_cls, size) in _ECDSA_CLASSIC.items():
        if key.curve.name == curve:
            r, s = decode_dss_signature(key.sign(octets, ec.ECDSA(hash_cls())))
            return method, r.to_bytes(size, "big") + s.to_bytes(size, "big")
    raise ValueError(f"no IKEv2 auth method for curve {key.curve.name}")


def _parse_alg_id(data: bytes) -> tuple[str, int]:
    """Read an AlgorithmIdentifier SEQUENCE { OID, params } (short-form DER lengths)."""
    if len(data) < 4 or data[0] != 0x30 or data[1] != len(data) - 2 or data[2] != 0x06:
        raise _fail("malformed signature AlgorithmIdentifier")
    oid = data[4 : 4 + data[3]]
    scheme = _OID_TO_SCHEME.get(oid)
    if scheme is None:
        raise _fail(f"unsupported signature algorithm {oid.hex()}")
    return scheme


def verify_signature(key: PublicKey, method: int, auth: bytes, octets: bytes) -> None:
    """Check AUTH data of `method` over `octets`; any mismatch is AUTHENTICATION_FAILED."""
    try:
        if method == AuthMethod.DIGITAL_SIGNATURE:
            if not auth:
                raise _fail("empty AUTH")
            alg_len = auth[0]
            kind, h = _parse_alg_id(auth[1 : 1 + alg_len])
            sig = auth[1 + alg_len :]
            if kind != _kind(key):
                raise _fail("signature scheme does not fit the certificate key")
            if isinstance(key, rsa.RSAPublicKey):
                key.verify(sig, octets, padding.PKCS1v15(), _HASHES[h]())
            else:
                key.verify(sig, octets, ec.ECDSA(_HASHES[h]()))
        elif method == AuthMethod.RSA_SIG and isinstance(key, rsa.RSAPublicKey):
            key.verify(auth, octets, padding.PKCS1v15(), hashes.SHA1())
        elif method in _ECDSA_CLASSIC and isinstance(key, ec.EllipticCurvePublicKey):
            curve, hash_cls, size = _ECDSA_CLASSIC[AuthMethod(method)]
            if key.curve.name != curve or len(auth) != 2 * size:
                raise _fail("ECDSA signature does not fit the key")
            r, s = int.from_bytes(auth[:size], "big"), int.from_bytes(auth[size:], "big")
            key.verify(encode_dss_signature(r, s), octets, ec.ECDSA(hash_cls()))
        else:
            raise _fail(f"auth method {method} does not fit the certificate key")
    except (InvalidSignature, ValueError) as e:
        if isinstance(e, IkeProtocolError):
            raise
        raise _fail("signature does not verify") from None


def ca_keyid(ca: x509.Certificate) -> bytes:
    """§3.7: a CERTREQ names a CA by the SHA-1 hash of its SubjectPublicKeyInfo."""
    h = hashes.Hash(hashes.SHA1())
    h.update(ca.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
    return h.finalize()


def certreq_payload(cas: Sequence[x509.Certificate]) -> CertReqPayload:
    """§3.7: the CERTREQ asking for the peer's certificate, naming the CAs we trust."""
    return CertReqPayload(CertEncoding.X509_SIGNATURE, b"".join(ca_keyid(ca) for ca in cas))


@dataclass(frozen=True, slots=True)
class TrustStore:
    """The CAs client certificates must chain to."""

    cas: tuple[x509.Certificate, ...]

    def verify_chain(
        self, end_entity: x509.Certificate, intermediates: Sequence[x509.Certificate],
        at: datetime.datetime,
    ) -> None:
        """Walk issuer links from `end_entity` to a trusted CA; check signatures and dates."""
        cert = end_entity
        pool = list(intermediates)
        for _ in range(8):
            if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
                raise _fail("certificate outside its validity period")
            for ca in self.cas:
                if _issued_by(cert, ca):
                    if not ca.not_valid_before_utc <= at <= ca.not_valid_after_utc:
                        raise _fail("CA certificate outside its validity period")
                    return
            parent = next((c for c in pool if _issued_by(cert, c)), None)
            if parent is None:
                raise _fail("certificate does not chain to a trusted CA")
            pool.remove(parent)
            cert = parent
        raise _fail("certificate chain too long")


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def identity_matches_cert(identity: Identity, cert: x509.Certificate) -> bool:
    """The ID the peer claims must be the certificate's subject or one of its SANs."""
    if identity.id_type == IdType.DER_ASN1_DN:
        return cert.subject.public_bytes() == identity.data
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    text = str(identity)
    if identity.id_type == IdType.FQDN:
        return text.lower() in [n.lower() for n in san.get_values_for_type(x509.DNSName)]
    if identity.id_type == IdType.RFC822_ADDR:
        return text.lower() in [n.lower() for n in san.get_values_for_type(x509.RFC822Name)]
    if identity.id_type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
        return text in [str(a) for a in san.get_values_for_type(x509.IPAddress)]
    return False


def load_certificate(data: bytes) -> x509.Certificate:
    """A DER certificate from a CERT payload; junk is AUTHENTICATION_FAILED."""
    try:
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise _fail("unreadable certificate") from None


def cert_public_key(cert: x509.Certificate) -> PublicKey:
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise _fail("certificate key is neither RSA nor ECDSA")
    return key
