"""Print the etcd permissions of every component instance as JSON, from cluster.grants.

Run on the controller by roles/etcd/tasks/rbac.yml; the etcd role turns the list into an
idempotent etcdctl script, so the grants are defined once, in cluster.grants.component_grants.

    etcd_grants.py --root /ipsec-cluster/prod/ keyd:keyd-1 node:node-1 sprayer:sprayer-1
"""

from __future__ import annotations

import argparse
import json
import sys

from cluster.grants import component_grants


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="the cluster's key prefix, ending in /")
    parser.add_argument("instances", nargs="*", metavar="COMPONENT:ID")
    args = parser.parse_args()
    users = []
    for spec in args.instances:
        component, _, ident = spec.partition(":")
        grants = component_grants(args.root, component, ident)
        users.append({"user": ident, "grants": [
            {"key": g.key, "perm": g.perm, "prefix": g.prefix} for g in grants]})
    json.dump(users, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
