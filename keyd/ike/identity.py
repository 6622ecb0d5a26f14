"""IKE identities (RFC 7296 §3.5) and their text form, as strongSwan writes them."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

from .constants import IdType
from .errors import IkeUsageError

_DN_KEYS = {
    "C": NameOID.COUNTRY_NAME, "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "L": NameOID.LOCALITY_NAME, "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME, "CN": NameOID.COMMON_NAME,
    "E": NameOID.EMAIL_ADDRESS, "SN": NameOID.SERIAL_NUMBER,
}


@dataclass(frozen=True, slots=True)
class Identity:
    """An identification payload's content: the ID type and its data."""

    id_type: int
    data: bytes

    def body(self) -> bytes:
        """ID type | RESERVED | data: what §2.15 MACs as IDi' / IDr'."""
        return bytes([self.id_type, 0, 0, 0]) + self.data

    def __str__(self) -> str:
        try:
            if self.id_type in (IdType.FQDN, IdType.RFC822_ADDR):
                return self.data.decode("utf-8", "replace")
            if self.id_type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR) and len(self.data) in (4, 16):
                return str(ipaddress.ip_address(self.data))
        except ValueError:
            pass
        if self.id_type == IdType.DER_ASN1_DN:
            return "dn:" + self.data.hex()
        return f"id{self.id_type}:{self.data.hex()}"


def dn_from_text(text: str) -> x509.Name:
    """strongSwan order, left to right: "C=CH, O=Example, CN=vpn.example.net"."""
    rdns = []
    for part in text.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or key.strip().upper() not in _DN_KEYS:
            raise IkeUsageError(f"cannot read distinguished name {text!r}")
        rdns.append(x509.NameAttribute(_DN_KEYS[key.strip().upper()], value.strip()))
    return x509.Name(rdns)


def identity_from_text(text: str, cert: x509.Certificate | None = None) -> Identity:
    """An address, a DN ("CN=…", the certificate's subject bytes when it matches),
    an RFC 822 address ("user@example.net"), or an FQDN."""
    try:
        ip = ipaddress.ip_address(text)
        return Identity(IdType.IPV4_ADDR if ip.version == 4 else IdType.IPV6_ADDR, ip.packed)
    except ValueError:
        pass
    if "=" in text:
        name = dn_from_text(text)
        if cert is not None and cert.subject == name:
            return Identity(IdType.DER_ASN1_DN, cert.subject.public_bytes())
        return Identity(IdType.DER_ASN1_DN, name.public_bytes())
    if "@" in text:
        return Identity(IdType.RFC822_ADDR, text.encode())
    return Identity(IdType.FQDN, text.encode())


def dn_text(name: x509.Name) -> str:
    """A DN the way strongSwan writes it: "C=CH, O=Example, CN=client" (in RDN order)."""
    short = {oid: key for key, oid in _DN_KEYS.items()}
    return ", ".join(
        f"{short.get(attr.oid, attr.oid.dotted_string)}={attr.value!s}"
        for rdn in name.rdns for attr in rdn
    )


def identity_text(identity: Identity, cert: x509.Certificate | None = None) -> str:
    """Readable identity; a DN is spelled from the certificate that proves it when given."""
    dn = identity.id_type == IdType.DER_ASN1_DN
    if dn and cert is not None and cert.subject.public_bytes() == identity.data:
        return dn_text(cert.subject)
    return str(identity)
