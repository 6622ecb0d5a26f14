"""Which traffic policy a Child SA carries, decided by keyd when it writes `sa/<spi>`.

A connection that names a policy (`policy = "<name>"`) binds every client of it to that
policy. Otherwise the first policy, in name order, with an `identities` glob matching the
client's authenticated identity (fnmatch: `*`, `?`, `[...]`, case-sensitive) is bound; none:
no policy, a full tunnel (as before policies existed). The Child SA record carries the
policy's name and a snapshot of its mode and rules: a node enforces the snapshot until it has
read `policy/` itself, then the live `policy/<name>` (so an operator's change takes effect on
established clients without a rekey).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Protocol

from cluster.policy.rules import Mode


class PolicyLike(Protocol):
    """The fields of a `policy/<name>` record (cluster.store.records.Policy) used here."""

    @property
    def name(self) -> str: ...
    @property
    def identities(self) -> list[str]: ...
    @property
    def mode(self) -> Mode: ...
    @property
    def allowed(self) -> list[str]: ...
    @property
    def denied(self) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class ChildPolicy:
    """The policy of one Child SA as its record carries it. `mode` None: keyd had no valid
    `policy/<name>` when it made the SA (the nodes drop its traffic until they read one)."""

    name: str
    mode: Mode | None
    allowed: tuple[str, ...] = ()
    denied: tuple[str, ...] = ()


def policy_of_identity(identity: str, policies: Mapping[str, PolicyLike]) -> str | None:
    """The name of the first policy (in name order) whose identities match `identity`."""
    for name in sorted(policies):
        if any(fnmatch.fnmatchcase(identity, glob) for glob in policies[name].identities):
            return name
    return None


def bind_policy(connection_policy: str | None, identity: str,
                policies: Mapping[str, PolicyLike],
                unusable: Collection[str] = ()) -> ChildPolicy | None:
    """The policy a new Child SA of `identity` carries: the connection's, else the first
    matching by identity, else None (full tunnel). `policies`: the `policy/` records by name
    as keyd last read them; `unusable`: those whose current value is malformed (`policies`
    then holds their last valid version, still used to bind by identity, never failing
    open): the SA carries no snapshot of them, and the nodes drop its traffic."""
    name = connection_policy or policy_of_identity(identity, policies)
    if name is None:
        return None
    p = policies.get(name)
    if p is None or name in unusable:
        return ChildPolicy(name, None)
    return ChildPolicy(name, p.mode, tuple(p.allowed), tuple(p.denied))
