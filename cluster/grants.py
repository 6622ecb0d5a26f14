"""The etcd permissions of each component (DESIGN.md, keyspace: who writes what).

Pure data: `cluster/store/rbac.py` applies them through the etcd Auth API, and the Ansible
etcd role (`ansible/roles/etcd/files/etcd_grants.py`) turns them into etcdctl commands.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Grant:
    """A key-range permission: `key` alone, or every key under it when `prefix`."""

    key: str
    perm: Literal["read", "write", "readwrite"]
    prefix: bool = True


def component_grants(root: str, component: str, ident: str) -> list[Grant]:
    """The grants of one component instance (DESIGN.md; issue 2, TLS and auth).

    keyd: rw ike/ sa/ pool/ assign/ redirect/ and its own keyd/<id>; read nodes/ keyd/
    policy/ seq/.
    node: read sa/ assign/ policy/ nodes/ ike/ keyd/; rw seq/ and its own nodes/<id>.
    sprayer: rw assign/ and the election key sprayer/leader; read everything else.
    hooks: read everything of the cluster.
    """
    def kind(k: str, perm: Literal["read", "write", "readwrite"]) -> Grant:
        return Grant(f"{root}{k}/", perm)

    if component == "keyd":
        return [kind(k, "readwrite") for k in ("ike", "sa", "pool", "assign", "redirect")] + \
               [kind(k, "read") for k in ("nodes", "keyd", "policy", "seq")] + \
               [Grant(f"{root}keyd/{ident}", "readwrite", prefix=False)]
    if component == "node":
        return [kind(k, "read") for k in ("sa", "assign", "policy", "nodes", "ike", "keyd")] + \
               [kind("seq", "readwrite"),
                Grant(f"{root}nodes/{ident}", "readwrite", prefix=False)]
    if component == "sprayer":
        return [Grant(root, "read"), kind("assign", "readwrite"),
                Grant(f"{root}sprayer/leader", "readwrite", prefix=False)]
    if component == "hooks":
        return [Grant(root, "read")]
    raise ValueError(f"unknown component {component!r}: keyd, node, sprayer or hooks")
