"""etcd users, roles and auth enable, through the etcd Auth API (gRPC stays in the store).

`apply_rbac` converges: it reads the roles and users etcd already has and only adds what is
missing, grants what is missing or different and revokes what is no longer wanted, so running
it again on an etcd it already set up (auth enabled, connected as root) succeeds and changes
nothing. Existing users keep their passwords (they authenticate by certificate CN).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import etcd3.etcdrpc as rpc
import etcd3.utils

from cluster.grants import Grant, component_grants

from .errors import translated

if TYPE_CHECKING:
    from .client import Store

_PERM = {"read": 0, "write": 1, "readwrite": 2}


def _call(store: Store, method: str, request: Any) -> Any:
    client = store.raw
    with translated(store.endpoint):
        return getattr(client.authstub, method)(
            request, store.timeout_s, credentials=client.call_credentials,
            metadata=client.metadata)


def _wanted(grants: Iterable[Grant]) -> dict[tuple[bytes, bytes], int]:
    """(key, range_end) -> permission type, as etcd stores a role's permissions."""
    out: dict[tuple[bytes, bytes], int] = {}
    for g in grants:
        key = etcd3.utils.to_bytes(g.key)
        end = etcd3.utils.prefix_range_end(key) if g.prefix else b""
        out[(key, end)] = _PERM[g.perm]
    return out


def role_grants(store: Store, role: str) -> dict[tuple[bytes, bytes], str]:
    """What etcd holds for `role`: (key, range_end) -> "read" / "write" / "readwrite"."""
    names = {v: k for k, v in _PERM.items()}
    return {(bytes(p.key), bytes(p.range_end)): names[int(p.permType)]
            for p in _call(store, "RoleGet", rpc.AuthRoleGetRequest(role=role)).perm}


def _role(store: Store, role: str, grants: Iterable[Grant], roles: set[str]) -> None:
    want = _wanted(grants)
    have: dict[tuple[bytes, bytes], int] = {}
    if role in roles:
        for p in _call(store, "RoleGet", rpc.AuthRoleGetRequest(role=role)).perm:
            have[(bytes(p.key), bytes(p.range_end))] = int(p.permType)
    else:
        _call(store, "RoleAdd", rpc.AuthRoleAddRequest(name=role))
    for (key, end), perm in want.items():
        if have.get((key, end)) != perm:
            _call(store, "RoleGrantPermission", rpc.AuthRoleGrantPermissionRequest(
                name=role, perm=rpc.auth_pb2.Permission(permType=perm, key=key, range_end=end)))
    for key, end in have.keys() - want.keys():
        _call(store, "RoleRevokePermission",
              rpc.AuthRoleRevokePermissionRequest(role=role, key=key, range_end=end))


def _user(store: Store, user: str, role: str, users: set[str]) -> None:
    if user in users:
        held = set(_call(store, "UserGet", rpc.AuthUserGetRequest(name=user)).roles)
        if role in held:
            return
    else:
        _call(store, "UserAdd", rpc.AuthUserAddRequest(name=user,
                                                       password=secrets.token_urlsafe(24)))
    _call(store, "UserGrantRole", rpc.AuthUserGrantRoleRequest(user=user, role=role))


def apply_rbac(store: Store, users: Sequence[tuple[str, Iterable[Grant]]]) -> None:
    """For each (user, grants): a role of the same name with exactly those grants, and the
    user (random password; it authenticates by certificate CN). Then `root` and auth enable.
    Idempotent: safe to run again on an etcd it set up (as root)."""
    roles = set(_call(store, "RoleList", rpc.AuthRoleListRequest()).roles)
    names = set(_call(store, "UserList", rpc.AuthUserListRequest()).users)
    for user, grants in users:
        _role(store, user, grants, roles)
        _user(store, user, user, names)
    _user(store, "root", "root", names)
    _call(store, "AuthEnable", rpc.AuthEnableRequest())  # etcd ignores it when enabled


def setup_etcd_rbac(store: Store, users: Iterable[tuple[str, str]]) -> None:
    """Create a role and user per (component, id) — user name = the id, which is the CN of
    its client certificate — plus `root`, then enable auth. Safe to re-run: it adds what is
    missing and revokes grants no longer wanted.
    `store` is a cluster.store.Store connected as root (or before auth is enabled)."""
    apply_rbac(store, [(ident, component_grants(store.keyspace.root, comp, ident))
                       for comp, ident in users])
