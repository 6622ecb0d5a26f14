"""The lab's PKI and secrets on disk: a CA, the gateway certificate, client certificates (all
made with cluster.pki), a PSK and the cluster data key. Secrets are files of mode 0600.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import tomllib
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cluster.pki import CertAuthority

CA_DAYS = 30
CERT_DAYS = 30
#: EAP users (EAP-MSCHAPv2, all with one password): one per concurrent EAP client, since a
#: client's INITIAL_CONTACT replaces the IKE SAs keyd holds for its identity
EAP_USERS = ("carol", "dave", "erin", "frank")
#: identities the lab PSK is for: lab clients (<name>.clients.lab.example) and bench's
LAB_PSK_IDS = ("*.clients.lab.example", "*@bench.example")
#: EAP clients that claim an identity in this domain (as Android's "IPSec identifier") are
#: checked by keyd itself in labs with FreeRADIUS (keyd's `eap-local` connection)
EAP_DOMAIN = "eap.lab.example"
#: shared-secret users (keyd's `shared-secret` connection, PSK both ways), each with a PSK
SHARED_DOMAIN = "shared.lab.example"
SHARED_USERS = (f"alice@{SHARED_DOMAIN}", f"bob@{SHARED_DOMAIN}", f"grace@{SHARED_DOMAIN}")


def write_secret(path: Path, data: bytes) -> None:
    """Create path with mode 0600 before anything secret is written to it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


#: what keyd's secrets file and strongSwan read as an encoding of a secret rather than as its
#: characters: "0x…" hex, "0s…" base64
ENCODED_PREFIXES = ("0x", "0s")


def printable_secret(nbytes: int) -> str:
    """A random secret of URL-safe characters (`nbytes` random bytes) that no reader takes for
    hex or base64: one in 2,048 of them began with "0x" or "0s", and keyd refused the lab's
    secrets file, or read a secret other than its clients did."""
    while True:
        secret = secrets.token_urlsafe(nbytes)
        if not secret.lower().startswith(ENCODED_PREFIXES):
            return secret


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

    def eap_password(self) -> str:
        """The one password of the lab's EAP users (EAP_USERS, in the secrets file)."""
        doc = tomllib.loads(self.secrets_file.read_text())
        return next(str(e["password"]) for e in doc["eap"] if e["id"] == EAP_USERS[0])

    @property
    def secrets_file(self) -> Path:
        """keyd's secrets file (keyd/secrets.py): the lab PSK for lab and bench clients,
        and one PSK of its own per shared-secret user (SHARED_USERS)."""
        return self.directory / "secrets.toml"

    def user_psk(self, identity: str) -> str:
        """The PSK the secrets file gives a shared-secret user."""
        doc = tomllib.loads(self.secrets_file.read_text())
        return next(str(e["secret"]) for e in doc["psk"] if e["id"] == identity)

    @property
    def data_key_file(self) -> Path:
        return self.directory / "data.key"

    def cert(self, name: str) -> Path:
        return self.directory / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.directory / f"{name}-key.pem"

    def psk(self) -> str:
        return self.psk_file.read_text().strip()

    def psk_fingerprint(self) -> str:
        """What `lab status` shows of the PSK: "sha256:" and the first 16 hex digits of the
        SHA-256 of the PSK (as written in the file, without the newline). Enough to tell two
        PSKs apart; the PSK itself is only ever in its file."""
        return "sha256:" + hashlib.sha256(self.psk().encode()).hexdigest()[:16]

    def create(self) -> None:
        """CA, PSK and data key (the gateway and client certificates come with `issue`)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        CertAuthority.create("ipsec-cluster lab CA", days=CA_DAYS).write_pem(
            self.ca_cert, self.ca_key)
        # A PSK of printable characters, so it can be pasted into any client's configuration.
        write_secret(self.psk_file, (printable_secret(24) + "\n").encode())
        write_secret(self.data_key_file, (secrets.token_hex(32) + "\n").encode())
        lab_ids = ", ".join(f'"{p}"' for p in LAB_PSK_IDS)
        entries = [f'[[psk]]\nid = [{lab_ids}]\nsecret = "{self.psk()}"\n']
        entries += [f'[[psk]]\nid = "{user}"\nsecret = "{printable_secret(18)}"\n'
                    for user in SHARED_USERS]
        password = printable_secret(12)
        entries += [f'[[eap]]\nid = "{user}"\npassword = "{password}"\n' for user in EAP_USERS]
        write_secret(self.secrets_file, "\n".join(entries).encode())

    def _ca(self) -> CertAuthority:
        key = serialization.load_pem_private_key(self.ca_key.read_bytes(), None)
        cert = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        return CertAuthority(cert, key)  # type: ignore[arg-type]

    def issue(self, name: str, sans: list[str], server: bool = False) -> tuple[Path, Path]:
        """A certificate signed by the lab CA, CN = sans[0]; returns (cert, key) paths."""
        issued = self._ca().issue(sans[0], sans, server=server, client=not server,
                                  days=CERT_DAYS)
        return issued.write_pem(self.cert(name), self.key(name))
