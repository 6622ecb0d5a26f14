"""Certificates with `cryptography`, and etcd users/roles for the components.

`CertAuthority.create(...)` makes a CA; `ca.issue(...)` a server or client certificate
(RSA or ECDSA) with DNS/IP/email SANs; `write_pem` writes cert and key files with the key at
mode 0600. Used by tests, the lab (IKE certificates) and etcd TLS.

`setup_etcd_rbac` creates the users and roles of DESIGN.md's components and enables auth.
With client-certificate auth, etcd 3.4 takes the certificate's CN as the user name, so a
component's certificate CN is its etcd user (`root`, `keyd-1`, `node-1`, `sprayer-1`).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

if TYPE_CHECKING:
    from cluster.store.client import Store

KeyType = Literal["rsa", "ecdsa"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def new_key(kind: KeyType = "ecdsa", bits: int = 2048) -> PrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    if kind == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"unknown key type {kind!r}: rsa or ecdsa")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _sans(names: Iterable[str]) -> list[x509.GeneralName]:
    """SANs from plain strings: an IP address, `email:x@y` / anything with '@', else DNS."""
    out: list[x509.GeneralName] = []
    for n in names:
        if n.startswith("email:") or "@" in n:
            out.append(x509.RFC822Name(n.removeprefix("email:")))
            continue
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            out.append(x509.DNSName(n))
    return out


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: PrivateKey

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def write_pem(self, cert_path: str | Path, key_path: str | Path) -> tuple[Path, Path]:
        """Write the certificate (0644) and the key (0600, created with that mode)."""
        cp, kp = Path(cert_path), Path(key_path)
        cp.write_bytes(self.cert_pem())
        fd = os.open(kp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(self.key_pem())
        os.chmod(kp, 0o600)
        return cp, kp


@dataclass(frozen=True)
class CertAuthority(Issued):
    """A self-signed CA that issues server and client certificates."""

    @classmethod
    def create(cls, cn: str = "ipsec-cluster CA", kind: KeyType = "ecdsa",
               days: int = 3650) -> CertAuthority:
        key = new_key(kind)
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    def issue(self, cn: str, sans: Sequence[str] = (), kind: KeyType = "ecdsa",
              server: bool = True, client: bool = True, days: int = 825) -> Issued:
        """A certificate for `cn` with SANs (DNS names, IPs, `email:` or user@host)."""
        key = new_key(kind)
        now = datetime.datetime.now(datetime.UTC)
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + \
                 ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn)).issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_encipherment=kind == "rsa",
                content_commitment=False, data_encipherment=False, key_agreement=False,
                key_cert_sign=False, crl_sign=False, encipher_only=False,
                decipher_only=False), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
        )
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(_sans(sans)),
                                            critical=False)
        return Issued(builder.sign(self.key, hashes.SHA256()), key)


# -- etcd users and roles -------------------------------------------------------------------

@dataclass(frozen=True)
class Grant:
    """A key-range permission: `key` alone, or every key under it when `prefix`."""

    key: str
    perm: Literal["read", "write", "readwrite"]
    prefix: bool = True


def component_grants(root: str, component: str, ident: str) -> list[Grant]:
    """The grants of one component instance (DESIGN.md; issue 2, TLS and auth).

    keyd: rw ike/ sa/ pool/ assign/ redirect/ and its own keyd/<id>; read nodes/ keyd/
    policy/ seq/.
    node: read sa/ assign/ policy/ nodes/ ike/ keyd/; rw seq/ and its own nodes/<id>.
    sprayer: rw assign/ and the election key sprayer/leader; read everything else.
    hooks: read everything of the cluster.
    """
    def kind(k: str, perm: Literal["read", "write", "readwrite"]) -> Grant:
        return Grant(f"{root}{k}/", perm)

    if component == "keyd":
        return [kind(k, "readwrite") for k in ("ike", "sa", "pool", "assign", "redirect")] + \
               [kind(k, "read") for k in ("nodes", "keyd", "policy", "seq")] + \
               [Grant(f"{root}keyd/{ident}", "readwrite", prefix=False)]
    if component == "node":
        return [kind(k, "read") for k in ("sa", "assign", "policy", "nodes", "ike", "keyd")] + \
               [kind("seq", "readwrite"),
                Grant(f"{root}nodes/{ident}", "readwrite", prefix=False)]
    if component == "sprayer":
        return [Grant(root, "read"), kind("assign", "readwrite"),
                Grant(f"{root}sprayer/leader", "readwrite", prefix=False)]
    if component == "hooks":
        return [Grant(root, "read")]
    raise ValueError(f"unknown component {component!r}: keyd, node, sprayer or hooks")


def setup_etcd_rbac(store: Store, users: Iterable[tuple[str, str]]) -> None:
    """Create a role and user per (component, id) — user name = the id, which is the CN of
    its client certificate — plus `root`, then enable auth. Safe to re-run: it adds what is
    missing and revokes grants no longer wanted.
    `store` is a cluster.store.Store connected as root (or before auth is enabled)."""
    from cluster.store.rbac import apply_rbac
    apply_rbac(store, [(ident, component_grants(store.keyspace.root, comp, ident))
                       for comp, ident in users])
