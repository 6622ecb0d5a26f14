"""Sealing of key material at rest: AES-GCM under the cluster data key.

The data key (32 bytes) comes from the environment variable IPSEC_CLUSTER_DATA_KEY (hex) or
from a file (raw 32 bytes or 64 hex digits) that only its owner may read (mode 0600). It is
never written to etcd. The associated data of every sealed blob is the etcd key it is stored
under, so a blob copied to another key does not open. Each blob names the id of the data key
that sealed it (a hash of the key, not the key), so a later rotation can hold several keys.

Sealed form (ASCII): `<key id, 16 hex>.<base64url(nonce 12 bytes || ciphertext+tag)>`.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ENV_VAR = "IPSEC_CLUSTER_DATA_KEY"
KEY_BYTES = 32
NONCE_BYTES = 12


class DataKeyError(Exception):
    """The data key cannot be loaded (missing, bad mode, bad length)."""


class WrongDataKey(Exception):
    """A sealed value does not open under our data key: names where our key came from."""


class DataKey:
    """The cluster data key. Its repr and str show the key id and source, never a key byte."""

    __slots__ = ("_aead", "key_id", "source")

    def __init__(self, key: bytes, source: str) -> None:
        if len(key) != KEY_BYTES:
            raise DataKeyError(f"data key from {source} has {len(key)} bytes, needs {KEY_BYTES}")
        self._aead = AESGCM(key)
        self.key_id = hashlib.sha256(b"ipsec-cluster data key id\0" + key).hexdigest()[:16]
        self.source = source

    def __repr__(self) -> str:
        return f"DataKey(id={self.key_id}, source={self.source})"

    __str__ = __repr__

    def seal(self, plaintext: bytes, etcd_key: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext, etcd_key.encode())
        return f"{self.key_id}.{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def open(self, token: str, etcd_key: str) -> bytes:
        key_id, sep, body = token.partition(".")
        if not sep:
            raise ValueError("sealed value has no key id")
        if key_id != self.key_id:
            raise WrongDataKey(
                f"{etcd_key} was sealed under data key {key_id}, but the data key from "
                f"{self.source} is {self.key_id}")
        try:
            raw = base64.urlsafe_b64decode(body.encode())
        except ValueError:
            raise ValueError("sealed value is not base64") from None
        if len(raw) < NONCE_BYTES + 16:
            raise ValueError("sealed value too short")
        try:
            return self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], etcd_key.encode())
        except InvalidTag:
            raise WrongDataKey(
                f"{etcd_key} does not open with the data key from {self.source} "
                "(wrong key, or the value was moved or altered)") from None


def parse_key_text(data: bytes, source: str) -> bytes:
    """32 raw bytes, or 64 hex digits with optional surrounding whitespace."""
    if len(data) == KEY_BYTES:
        return data
    try:
        key = bytes.fromhex(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise DataKeyError(f"data key from {source} is neither 32 raw bytes nor 64 hex digits")\
            from None
    if len(key) != KEY_BYTES:
        raise DataKeyError(f"data key from {source} has {len(key)} bytes, needs {KEY_BYTES}")
    return key


def load_data_key(path: str | Path | None, environ: Mapping[str, str] | None = None) -> DataKey:
    """The data key from IPSEC_CLUSTER_DATA_KEY (hex) if set, else from `path` (mode 0600)."""
    env = os.environ if environ is None else environ
    if env.get(ENV_VAR):
        return DataKey(parse_key_text(env[ENV_VAR].encode(), f"${ENV_VAR}"), f"${ENV_VAR}")
    if path is None:
        raise DataKeyError(f"no data key: set {ENV_VAR} or [cluster] data_key_file")
    p = Path(path)
    try:
        st = p.stat()
    except OSError as exc:
        raise DataKeyError(f"data key file {p}: {exc.strerror}") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise DataKeyError(
            f"data key file {p} is readable by group or others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}); chmod 600 it")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise DataKeyError(f"data key file {p}: {exc.strerror}") from None
    return DataKey(parse_key_text(data, str(p)), str(p))


def write_data_key(path: str | Path) -> DataKey:
    """Create a new random data key file (hex, mode 0600). Refuses to overwrite."""
    p = Path(path)
    key = os.urandom(KEY_BYTES)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
    return DataKey(key, str(p))
