"""Secrets by identity: the pre-shared keys and EAP passwords clients prove themselves with.

The shell reads them from the secrets file (keyd/secrets.py) and hands the core a `Secrets`;
on SIGHUP it hands it a new one (`Responder.use_secrets`), which applies from the next
IKE_AUTH on: established SAs keep their keys.

The PSK a client proves with is the one for the identity it claims: an entry for exactly
that identity first, else the first wildcard entry (`*@example.org`, `%any`) that matches,
in file order. When keyd proves itself by PSK (`local_auth = psk`), it uses the same PSK
(Apple's "shared secret", Android's "IKEv2/IPSec PSK": one secret, both directions).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .connections import IdentityPattern


@dataclass(frozen=True, slots=True)
class Secrets:
    """PSKs by identity pattern (file order) and EAP passwords by exact identity."""

    psks: Sequence[tuple[str, bytes]] = ()           # (identity pattern, key)
    eap_users: Mapping[str, str] = field(default_factory=dict)   # identity → password
    _exact: dict[str, bytes] = field(init=False, repr=False)
    _wild: tuple[tuple[IdentityPattern, bytes], ...] = field(init=False, repr=False)
    _eap: dict[str, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        exact: dict[str, bytes] = {}
        wild: list[tuple[IdentityPattern, bytes]] = []
        for text, key in self.psks:
            pattern = IdentityPattern(text)
            if pattern.is_exact:
                exact.setdefault(pattern.text.casefold(), key)
            else:
                wild.append((pattern, key))
        object.__setattr__(self, "_exact", exact)
        object.__setattr__(self, "_wild", tuple(wild))
        object.__setattr__(self, "_eap", {i.casefold(): p for i, p in self.eap_users.items()})

    def psk(self, identity: str) -> bytes | None:
        """The PSK of `identity`, or None: no entry applies to it (an unknown identity)."""
        got = self._exact.get(identity.casefold())
        if got is not None:
            return got
        return next((key for pattern, key in self._wild if pattern.matches(identity)), None)

    def eap_password(self, identity: str) -> str | None:
        """The EAP password of `identity` (the EAP-Identity the client sent), or None."""
        return self._eap.get(identity.casefold())

    def with_any_psk(self, key: bytes | None) -> Secrets:
        """These secrets plus `key` for every identity no entry names (the legacy psk_file)."""
        if key is None:
            return self
        return Secrets((*self.psks, ("%any", key)), self.eap_users)

    @property
    def counts(self) -> tuple[int, int]:
        """(PSK entries, EAP users): for the log line of a (re)load."""
        return len(self.psks), len(self.eap_users)
