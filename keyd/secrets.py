"""The secrets file: PSKs and EAP users by identity (docs/configuration.md, "Secrets").

    [[psk]]
    id = "alice@example.org"          # exact, a wildcard ("*@example.org"), or "%any"
    secret = "correct horse battery"  # "0x…": hex, "0s…": base64 (as strongSwan reads them)
    [[eap]]
    id = "carol@example.org"
    password = "…"

The file must be 0600 (or stricter) and belong to keyd's user; every problem is one
`ConfigError` line naming the file and the field, never the secret. keyd reads it at start
and again on SIGHUP (a file that does not read then keeps the secrets in use).
"""

from __future__ import annotations

import tomllib
from typing import Any

from .config import ConfigError, decode_psk, read_secret
from .ike.connections import IdentityPattern
from .ike.errors import IkeUsageError
from .ike.secrets import Secrets

_FIELDS = {"psk": ("id", "secret"), "eap": ("id", "password")}


def load_secrets(path: str) -> Secrets:
    """Read and check the secrets file. Raises ConfigError."""
    raw = read_secret(path, "secrets file")
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"secrets file {path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"secrets file {path}: not TOML: {exc}") from None
    for key in doc:
        if key not in _FIELDS:
            raise ConfigError(f"secrets file {path}: unknown section {key!r} (psk, eap)")
    psks: list[tuple[str, bytes]] = []
    eap: dict[str, str] = {}
    for kind, (id_key, value_key) in _FIELDS.items():
        entries = doc.get(kind, [])
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ConfigError(f"secrets file {path}: {kind} must be a list of tables "
                              f"([[{kind}]])")
        for i, entry in enumerate(entries):
            where = f"secrets file {path}: {kind}[{i}]"
            for key in entry:
                if key not in (id_key, value_key):
                    raise ConfigError(f"{where}: unknown field {key!r}")
            ids = _ids(where, entry.get(id_key))
            value = entry.get(value_key)
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{where}.{value_key} must be a non-empty string")
            if kind == "psk":
                key_bytes = _psk_bytes(where, value)
                psks.extend((identity, key_bytes) for identity in ids)
            else:
                for identity in ids:
                    if not IdentityPattern(identity).is_exact:
                        raise ConfigError(f"{where}.id: an EAP user is one identity, not "
                                          f"{identity!r}")
                    if identity.casefold() in (u.casefold() for u in eap):
                        raise ConfigError(f"{where}.id: {identity!r} is listed twice")
                    eap[identity] = value
    return Secrets(tuple(psks), eap)


def _ids(where: str, value: Any) -> list[str]:
    ids = [value] if isinstance(value, str) else value
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise ConfigError(f"{where}.id must be an identity or a list of identities")
    for identity in ids:
        try:
            IdentityPattern(identity)
        except IkeUsageError:
            raise ConfigError(f"{where}.id must not be empty") from None
    return [i.strip() for i in ids]


def _psk_bytes(where: str, value: str) -> bytes:
    return decode_psk(value, f"{where}.secret")
