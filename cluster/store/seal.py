"""Sealing of key material at rest: AES-GCM under the cluster data key.

The data key (32 bytes) comes from the environment variable IPSEC_CLUSTER_DATA_KEY (hex) or
from a file (raw 32 bytes or 64 hex digits) that only its owner may read (mode 0600). It is
never written to etcd. The associated data of every sealed blob is the etcd key it is stored
under, so a blob copied to another key does not open. Each blob names the id of the data key
that sealed it (a hash of the key, not the key).

Key ring (rotation): a `DataKey` holds the current key, which seals, and any number of
retired keys, which only open. In a key file that is one key per line (64 hex digits; `#`
starts a comment), the current key first; in the environment variable the keys are
separated by commas or whitespace, current first. A blob opens under whichever key of the
ring its key id names (docs/operator-guide.md, "Rotating the cluster data key").

`PublicView` stands where a data key would for tools that must not hold one (clusterctl,
cluster-hooks): records decode with their public fields and every sealed field empty (b""),
and nothing can be sealed through it.

Sealed form (ASCII): `<key id, 16 hex>.<base64url(nonce 12 bytes || ciphertext+tag)>`.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ENV_VAR = "IPSEC_CLUSTER_DATA_KEY"
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
_TOKEN = re.compile(r"^([0-9a-f]{16})\.([A-Za-z0-9_-]+={0,2})$")


class DataKeyError(Exception):
    """The data key cannot be loaded (missing, bad mode, bad length)."""


class WrongDataKey(Exception):
    """A sealed value does not open under our data key: names where our key came from."""


def key_id_of(key: bytes) -> str:
    """The public id of a data key: a hash of it, never the key."""
    return hashlib.sha256(b"ipsec-cluster data key id\0" + key).hexdigest()[:16]


def sealed_key_id(token: str) -> str:
    """The id of the data key that sealed `token`; ValueError if it is not a sealed value."""
    m = _TOKEN.match(token)
    if m is None:
        raise ValueError("not a sealed value (<key id>.<base64url>)")
    return m.group(1)


class DataKey:
    """The cluster data key ring: the current key (seals and opens) and retired keys (open
    only). Its repr and str show key ids and the source, never a key byte."""

    __slots__ = ("_ring", "key_id", "source")

    def __init__(self, key: bytes, source: str, retired: Iterable[bytes] = ()) -> None:
        ring: dict[str, AESGCM] = {}
        for k in (key, *retired):
            if len(k) != KEY_BYTES:
                raise DataKeyError(f"data key from {source} has {len(k)} bytes, needs {KEY_BYTES}")
            ring.setdefault(key_id_of(k), AESGCM(k))
        self._ring = ring
        self.key_id = key_id_of(key)
        self.source = source

    @property
    def key_ids(self) -> tuple[str, ...]:
        """Every key id of the ring, the current one first."""
        return tuple(self._ring)

    @property
    def retired_ids(self) -> tuple[str, ...]:
        return tuple(k for k in self._ring if k != self.key_id)

    def __repr__(self) -> str:
        retired = f", retired={','.join(self.retired_ids)}" if len(self._ring) > 1 else ""
        return f"DataKey(id={self.key_id}{retired}, source={self.source})"

    __str__ = __repr__

    def seal(self, plaintext: bytes, etcd_key: str) -> str:
        """Seal under the current key."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ring[self.key_id].encrypt(nonce, plaintext, etcd_key.encode())
        return f"{self.key_id}.{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def is_current(self, token: str) -> bool:
        """Whether `token` was sealed under the current key (False: a retired or unknown
        key; a re-seal writes it under the current one)."""
        return sealed_key_id(token) == self.key_id

    def open(self, token: str, etcd_key: str) -> bytes:
        """Open a value sealed under any key of the ring. ValueError if `token` is not a
        sealed value; WrongDataKey if no key of the ring opens it."""
        key_id, sep, body = token.partition(".")
        if not sep:
            raise ValueError("sealed value has no key id")
        aead = self._ring.get(key_id)
        if aead is None:
            held = ", ".join(self.key_ids)
            raise WrongDataKey(
                f"{etcd_key} was sealed under data key {key_id}, but the data key from "
                f"{self.source} is {held}")
        try:
            raw = base64.urlsafe_b64decode(body.encode())
        except ValueError:
            raise ValueError("sealed value is not base64") from None
        if len(raw) < NONCE_BYTES + TAG_BYTES:
            raise ValueError("sealed value too short")
        try:
            return aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], etcd_key.encode())
        except InvalidTag:
            raise WrongDataKey(
                f"{etcd_key} does not open with the data key from {self.source} "
                "(wrong key, or the value was moved or altered)") from None


class PublicView:
    """No data key: decode public fields only (sealed fields become b""), seal nothing."""

    __slots__ = ()
    key_id = "withheld"
    source = "no data key (public fields only)"

    def __repr__(self) -> str:
        return "PublicView()"

    def seal(self, plaintext: bytes, etcd_key: str) -> str:
        raise ValueError(f"{etcd_key}: a public view holds no data key and writes no key "
                         "material")

    def check(self, token: str, etcd_key: str) -> None:
        """ValueError unless `token` has the form of a sealed value (nothing is opened)."""
        sealed_key_id(token)
        raw = base64.urlsafe_b64decode(token.partition(".")[2].encode())
        if len(raw) < NONCE_BYTES + TAG_BYTES:
            raise ValueError("sealed value too short")


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


def parse_key_ring(data: bytes, source: str, separators: str = "\n") -> list[bytes]:
    """The keys of a key file or variable, current first: 32 raw bytes (one key), or keys of
    64 hex digits separated by `separators` (`#` starts a comment in a file)."""
    if len(data) == KEY_BYTES:
        return [data]
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise DataKeyError(f"data key from {source} is neither 32 raw bytes nor 64 hex digits")\
            from None
    parts: list[str] = []
    for line in text.splitlines():
        line = line.partition("#")[0]
        for sep in separators:
            line = line.replace(sep, " ")
        parts.extend(line.split())
    if not parts:
        raise DataKeyError(f"data key from {source} is empty")
    keys: list[bytes] = []
    for n, part in enumerate(parts, 1):
        where = source if len(parts) == 1 else f"{source} (key {n})"
        keys.append(parse_key_text(part.encode(), where))
    return keys


def load_data_key(path: str | Path | None, environ: Mapping[str, str] | None = None) -> DataKey:
    """The data key ring from IPSEC_CLUSTER_DATA_KEY (hex keys, comma-separated, current
    first) if set, else from `path` (mode 0600; one hex key per line, current first)."""
    env = os.environ if environ is None else environ
    if env.get(ENV_VAR):
        source = f"${ENV_VAR}"
        keys = parse_key_ring(env[ENV_VAR].encode(), source, separators=",")
        return DataKey(keys[0], source, keys[1:])
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
    keys = parse_key_ring(data, str(p))
    return DataKey(keys[0], str(p), keys[1:])


def write_data_key(path: str | Path) -> DataKey:
    """Create a new random data key file (hex, mode 0600). Refuses to overwrite."""
    p = Path(path)
    key = os.urandom(KEY_BYTES)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
    return DataKey(key, str(p))
