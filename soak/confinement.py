"""Study 7: confinement. An etcd of its own with TLS and client certificates, RBAC set up by
the project (cluster.store.rbac.setup_etcd_rbac: one role per component instance, user = its
certificate's CN); then each component's credentials try every prefix of the keyspace, of
another cluster's keyspace and outside both, to read (a range read of the whole prefix) and to
write (a put under the prefix, and of the instance's own and another instance's key). What
etcd allows is compared with what the role grants (cluster.grants.component_grants): an allowed
request the role does not grant is a request allowed beyond the role (goal 0)."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from soak import decoders as d
from soak.budget import Budget

METHOD = (
    "A TLS etcd started for the study (client certificates, RBAC enabled by "
    "`cluster.store.rbac.setup_etcd_rbac`, as `clusterctl`/Ansible set it up); each component "
    "instance's certificate tries a range read and a put on every prefix of its cluster, of "
    "another cluster and outside both, plus its own and a sibling's lease key. Allowed means "
    "etcd answered; refused means PermissionDenied.")

INSTANCES = (("keyd", "keyd-1"), ("keyd", "keyd-2"), ("node", "node-1"), ("node", "node-2"),
             ("sprayer", "sprayer-1"), ("hooks", "hooks-1"))
KINDS = ("nodes", "keyd", "ike", "sa", "assign", "seq", "pool", "policy", "sprayer")


def _granted(grants: list[Any], key: str, op: str, prefix: bool) -> bool:
    """Whether `grants` allow `op` ("read"/"write") on `key` (the whole range under it when
    `prefix`), as etcd's RBAC decides: one grant must cover the whole range."""
    for g in grants:
        if op not in g.perm and g.perm != "readwrite":
            continue
        if g.prefix:
            if key.startswith(g.key):
                return True
        elif not prefix and key == g.key:
            return True
    return False


def _probes(root: str, other_root: str, ident: str, sibling: str) -> list[tuple[str, bool]]:
    """(key, is a prefix) for every request tried."""
    out: list[tuple[str, bool]] = []
    for base in (root, other_root):
        out += [(f"{base}{k}/", True) for k in KINDS]
        out.append((base, True))
    out += [("/soak-outside/", True), (f"{root}nodes/{ident}", False),
            (f"{root}keyd/{ident}", False), (f"{root}nodes/{sibling}", False),
            (f"{root}keyd/{sibling}", False), (f"{root}sprayer/leader", False)]
    return out


def _try(store: Any, key: str, prefix: bool, op: str) -> bool:
    try:
        if op == "read":
            if prefix:
                store.scan(key)
            else:
                store.raw_get(key)
        else:
            store.raw_put(key + ("soak-probe" if prefix else ""), b"soak confinement probe")
        return True
    except d.PermissionDenied:
        return False


def run(budget: Budget) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="soak-confinement-"))
    ca = d.CertAuthority.create("soak etcd CA")
    ca_pem = workdir / "ca.pem"
    ca_pem.write_bytes(ca.cert_pem())
    server_cert, server_key = ca.issue("etcd", ["localhost", "127.0.0.1"], kind="rsa") \
        .write_pem(workdir / "server.pem", workdir / "server-key.pem")
    certs = {cn: ca.issue(cn, [f"{cn}.example.net"], server=False).write_pem(
        workdir / f"{cn}.pem", workdir / f"{cn}-key.pem")
        for cn in ("root", *(i for _, i in INSTANCES))}
    server = d.EtcdServer(workdir / "data", tls=(ca_pem, server_cert, server_key))
    keyspace, other = d.Keyspace("soak"), d.Keyspace("soak-other")
    server.start()
    try:
        def store(cn: str) -> Any:
            cert, key = certs[cn]
            return d.Store([server.endpoint], keyspace, d.PublicView(), cacert=str(ca_pem),
                           cert=str(cert), key=str(key),
                           timeout_s=budget.confinement_timeout_s)

        with store("root") as root:
            d.setup_etcd_rbac(root, list(INSTANCES))
        components = []
        refused_within = 0
        for comp, ident in INSTANCES:
            sibling = {"keyd-1": "keyd-2", "keyd-2": "keyd-1", "node-1": "node-2"}.get(
                ident, "node-1")
            grants = d.component_grants(keyspace.root, comp, ident)
            row: dict[str, Any] = {"user": ident, "tried": 0, "allowed": 0, "beyond": []}
            with store(ident) as s:
                for key, prefix in _probes(keyspace.root, other.root, ident, sibling):
                    for op in ("read", "write"):
                        row["tried"] += 1
                        allowed = _try(s, key, prefix, op)
                        granted = _granted(grants, key, op, prefix)
                        row["allowed"] += allowed
                        if allowed and not granted:
                            row["beyond"].append(f"{op} {key}")
                        if granted and not allowed:
                            refused_within += 1
            components.append(row)
        return {"method": METHOD, "components": components, "refused_within": refused_within,
                "at": time.time()}
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
