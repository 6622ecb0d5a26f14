"""The lab's own PKI and secrets: a CA, the gateway certificate, client certificates, a PSK
and the cluster data key. ECDSA P-256 keys, PEM files, secrets with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALID = dt.timedelta(days=30)


def write_secret(path: Path, data: bytes) -> None:
    """Create path with mode 0600 before anything secret is written to it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ipsec-cluster lab"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class LabPki:
    """Files under `directory`: ca.pem, ca-key.pem, <name>.pem / <name>-key.pem, psk, data.key."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca-key.pem"

    @property
    def psk_file(self) -> Path:
        return self.directory / "psk"

    @property
    def data_key_file(self) -> Path:
        return self.directory / "data.key"

    def cert(self, name: str) -> Path:
        return self.directory / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.directory / f"{name}-key.pem"

    def psk(self) -> str:
        return self.psk_file.read_text().strip()

    def create(self) -> None:
        """CA, PSK and data key (the gateway and client certificates come with `issue`)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        name = _name("ipsec-cluster lab CA")
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + _VALID)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256())
        )
        write_secret(self.ca_key, _key_pem(key))
        self.ca_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        # A PSK of printable characters, so it can be pasted into any client's configuration.
        write_secret(self.psk_file, (secrets.token_urlsafe(24) + "\n").encode())
        write_secret(self.data_key_file, (secrets.token_hex(32) + "\n").encode())

    def issue(self, name: str, dns: list[str], ips: list[str] | None = None,
              server: bool = False) -> tuple[Path, Path]:
        """An end-entity certificate signed by the lab CA; returns (cert, key) paths."""
        ca_key = serialization.load_pem_private_key(self.ca_key.read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        alt: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        alt += [x509.IPAddress(ipaddress.ip_address(a)) for a in ips or []]
        usage = [ExtendedKeyUsageOID.SERVER_AUTH] if server else [ExtendedKeyUsageOID.CLIENT_AUTH]
        cert = (
            x509.CertificateBuilder().subject_name(_name(dns[0])).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + _VALID)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        write_secret(self.key(name), _key_pem(key))
        self.cert(name).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return self.cert(name), self.key(name)
