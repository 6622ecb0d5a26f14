"""The lab's PKI and secrets on disk: a CA, the gateway certificate, client certificates (all
made with cluster.pki), a PSK and the cluster data key. Secrets are files of mode 0600.
"""

from __future__ import annotations

import os
import secrets
import tomllib
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cluster.pki import CertAuthority

CA_DAYS = 30
CERT_DAYS = 30
EAP_USERS = ("carol", "dave")


def write_secret(path: Path, data: bytes) -> None:
    """Create path with mode 0600 before anything secret is written to it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


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
    def eap_users_file(self) -> Path:
        """keyd's EAP users (TOML `[eap_users]`): the lab's EAP-MSCHAPv2 clients log in as
        one of EAP_USERS, all with the one password `eap_password()`."""
        return self.directory / "eap-users.toml"

    def eap_password(self) -> str:
        users = tomllib.loads(self.eap_users_file.read_text())["eap_users"]
        return str(users[EAP_USERS[0]])

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
        CertAuthority.create("ipsec-cluster lab CA", days=CA_DAYS).write_pem(
            self.ca_cert, self.ca_key)
        # A PSK of printable characters, so it can be pasted into any client's configuration.
        write_secret(self.psk_file, (secrets.token_urlsafe(24) + "\n").encode())
        write_secret(self.data_key_file, (secrets.token_hex(32) + "\n").encode())
        password = secrets.token_urlsafe(12)
        write_secret(self.eap_users_file, ("[eap_users]\n" + "".join(
            f'"{user}" = "{password}"\n' for user in EAP_USERS)).encode())

    def _ca(self) -> CertAuthority:
        key = serialization.load_pem_private_key(self.ca_key.read_bytes(), None)
        cert = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        return CertAuthority(cert, key)  # type: ignore[arg-type]

    def issue(self, name: str, sans: list[str], server: bool = False) -> tuple[Path, Path]:
        """A certificate signed by the lab CA, CN = sans[0]; returns (cert, key) paths."""
        issued = self._ca().issue(sans[0], sans, server=server, client=not server,
                                  days=CERT_DAYS)
        return issued.write_pem(self.cert(name), self.key(name))
