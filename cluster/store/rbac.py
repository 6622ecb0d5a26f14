"""etcd users, roles and auth enable, through the etcd Auth API (gRPC stays in the store)."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import etcd3.etcdrpc as rpc
import etcd3.utils

from .errors import translated

if TYPE_CHECKING:
    from cluster.pki import Grant

    from .client import Store

_PERM = {"read": 0, "write": 1, "readwrite": 2}


def _call(store: Store, method: str, request: Any) -> Any:
    client = store.raw
    with translated(store.endpoint):
        return getattr(client.authstub, method)(
            request, store.timeout_s, credentials=client.call_credentials,
            metadata=client.metadata)


def apply_rbac(store: Store, users: Sequence[tuple[str, Iterable[Grant]]]) -> None:
    """For each (user, grants): a role of the same name with those grants, and the user
    (random password; it authenticates by certificate CN). Then `root` and auth enable."""
    for user, grants in users:
        _call(store, "RoleAdd", rpc.AuthRoleAddRequest(name=user))
        for g in grants:
            key = etcd3.utils.to_bytes(g.key)
            end = etcd3.utils.prefix_range_end(key) if g.prefix else b""
            perm = rpc.auth_pb2.Permission(permType=_PERM[g.perm], key=key, range_end=end)
            _call(store, "RoleGrantPermission",
                  rpc.AuthRoleGrantPermissionRequest(name=user, perm=perm))
        _call(store, "UserAdd", rpc.AuthUserAddRequest(name=user,
                                                       password=secrets.token_urlsafe(24)))
        _call(store, "UserGrantRole", rpc.AuthUserGrantRoleRequest(user=user, role=user))
    _call(store, "UserAdd", rpc.AuthUserAddRequest(name="root", password=secrets.token_urlsafe(24)))
    _call(store, "UserGrantRole", rpc.AuthUserGrantRoleRequest(user="root", role="root"))
    _call(store, "AuthEnable", rpc.AuthEnableRequest())
