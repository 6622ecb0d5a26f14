"""Policy routes on the router: mark → back-end host, and client virtual IP → owning node.

For every back-end host (keyd instance or node) with mark M: `ip rule fwmark M lookup M` and,
in routing table M, `VIP via <back-end address>`. For every client virtual IP: a /32 route
via its owning node's back-end address, tagged with our route protocol number so that we
only ever list, replace or delete our own routes. Rules and tables change through one
`ip -batch -`; client routes, which flip with every move, through rtnetlink (netlink.py).
Used by the nftables driver and by the userspace forwarder (which sets SO_MARK instead).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping

from cluster.host import DriverError, run
from cluster.netlink import RouteSocket, table_id
from sprayer.backends import MARK_BASE, MARK_MASK, Backend

#: route protocol number tagging the client routes we own (/etc/iproute2/rt_protos: unused)
ROUTE_PROTO = 149
RULE_PREF = 1000


class RouteDriver:
    """Keeps ip rules, per-back-end tables and client /32 routes in sync."""

    def __init__(self, vip: str, *, netns: str | None = None,
                 client_table: str = "main") -> None:
        self.vip = vip
        self.netns = netns
        self.client_table = client_table
        self._backends: dict[int, str] = {}
        self._synced = False
        self._clients: dict[str, str] | None = None
        self._netlink: RouteSocket | None = None

    def _ip(self, *args: str, stdin: str | None = None) -> str:
        ns = ["-n", self.netns] if self.netns else []
        return run(["ip", *ns, *args], stdin=stdin)

    def _batch(self, lines: list[str]) -> None:
        if lines:
            self._ip("-batch", "-", stdin="\n".join(lines) + "\n")

    # back ends ---------------------------------------------------------------------------
    def _our_rules(self) -> set[int]:
        rules = json.loads(self._ip("-j", "rule", "show") or "[]")
        marks: set[int] = set()
        for r in rules:
            fw = r.get("fwmark")
            if fw is not None and r.get("priority") == RULE_PREF:
                m = int(str(fw).split("/")[0], 0)
                if m & MARK_MASK == MARK_BASE:
                    marks.add(m)
        return marks

    def sync_backends(self, backends: Mapping[int, Backend]) -> None:
        """One rule and one table per mark in `backends`; rules of gone marks are removed."""
        if self._synced and self._backends == {m: b.address for m, b in backends.items()}:
            return      # nothing changed since the last successful sync: no `ip` call
        lines: list[str] = []
        have = self._our_rules()
        for m, b in sorted(backends.items()):
            if self._backends.get(m) != b.address:
                lines.append(f"route replace {self.vip}/32 via {b.address} table {m}")
            if m not in have:
                lines.append(f"rule add pref {RULE_PREF} fwmark {m:#x} lookup {m}")
        gone = [f"rule del pref {RULE_PREF} fwmark {m:#x} lookup {m}\n"
                f"route del {self.vip}/32 table {m}" for m in sorted(have - backends.keys())]
        try:
            self._batch(lines)
        except DriverError:
            self._backends = {}
            self._synced = False
            raise
        if gone:
            # best effort: a table someone already flushed is no reason to fail
            ns = ["-n", self.netns] if self.netns else []
            with contextlib.suppress(DriverError):
                run(["ip", *ns, "-force", "-batch", "-"], stdin="\n".join(gone) + "\n")
        self._backends = {m: b.address for m, b in backends.items()}
        self._synced = True

    # client virtual IPs ------------------------------------------------------------------
    def _our_client_routes(self) -> dict[str, str]:
        """Our client routes of both families (a client's IPv6 virtual address has one)."""
        routes: dict[str, str] = {}
        for family in ("-4", "-6"):
            out = self._ip("-j", family, "route", "show", "table", self.client_table,
                           "proto", str(ROUTE_PROTO))
            routes.update({r["dst"]: r.get("gateway", "") for r in json.loads(out or "[]")})
        return routes

    def sync_clients(self, desired: Mapping[str, str]) -> int:
        """Make our /32 routes equal `desired` (virtual IP → back-end address)."""
        if self._clients is None:
            self._clients = self._our_client_routes()
        gone = sorted(self._clients.keys() - desired.keys())
        changed = sorted((ip, via) for ip, via in desired.items() if self._clients.get(ip) != via)
        if not gone and not changed:
            return 0
        try:
            if self._netlink is None:
                self._netlink = RouteSocket(self.netns)
            self._netlink.apply(changed, gone, table_id(self.client_table), ROUTE_PROTO)
        except DriverError:
            self._clients = None
            raise
        self._clients = dict(desired)
        return len(gone) + len(changed)

    def remove(self) -> None:
        """Delete every rule, table and client route we own."""
        self.sync_backends({})
        self.sync_clients({})
