"""Create the cluster's credentials on the Ansible controller, once.

Run by roles/common/tasks/credentials.yml with the controller's Python, which must have
ipsec-cluster installed (the certificates come from cluster.pki). Everything already present
is kept: a second run changes nothing. Prints one JSON object: {"changed": ..., "created": [...]}.

    DIR/data.key                    the cluster data key (32 random bytes, hex), 0600
    DIR/psk                         the IKE pre-shared key, 0600
    DIR/etcd/ca.pem, ca-key.pem     the etcd CA
    DIR/etcd/<member>.pem, -key.pem etcd member certificates (server + peer), SANs given
    DIR/etcd/<user>.pem, -key.pem   client certificates; the CN is the etcd user
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cluster.pki import CertAuthority, PrivateKey


def write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")


def load_or_create_ca(directory: Path, cluster: str, created: list[str]) -> CertAuthority:
    cert_path, key_path = directory / "ca.pem", directory / "ca-key.pem"
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, PrivateKey):
            raise SystemExit(f"{key_path}: not an RSA or ECDSA key")
        return CertAuthority(cert, key)
    ca = CertAuthority.create(f"ipsec-cluster {cluster} etcd CA")
    ca.write_pem(cert_path, key_path)
    created.append(str(cert_path))
    return ca


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--etcd-member", action="append", default=[], metavar="NAME=SAN,...")
    parser.add_argument("--client", action="append", default=[], metavar="USER")
    args = parser.parse_args()

    created: list[str] = []
    etcd_dir = args.dir / "etcd"
    etcd_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name, make in (("data.key", lambda: secrets.token_hex(32)),
                       ("psk", lambda: secrets.token_urlsafe(32))):
        if not (args.dir / name).exists():
            write_secret(args.dir / name, make())
            created.append(str(args.dir / name))

    ca = load_or_create_ca(etcd_dir, args.cluster, created)
    wanted: list[tuple[str, list[str], bool]] = []
    for spec in args.etcd_member:
        name, _, sans = spec.partition("=")
        wanted.append((name, [s for s in sans.split(",") if s], True))
    wanted += [(user, [], False) for user in args.client]
    for cn, sans, server in wanted:
        cert_path, key_path = etcd_dir / f"{cn}.pem", etcd_dir / f"{cn}-key.pem"
        if cert_path.exists() and key_path.exists():
            continue
        ca.issue(cn, sans, server=server, client=True).write_pem(cert_path, key_path)
        created.append(str(cert_path))

    json.dump({"changed": bool(created), "created": created}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
