"""The nftables driver: the fast path, where the kernel forwards and Python only edits maps.

One table (`inet ipsec_cluster`), one prerouting chain at mangle priority, for packets to the
VIP (which is *not* a local address of the router; it is routed to the back ends):

1. UDP dport 500 (IKE) → a keyd instance's mark: with several live instances, jhash over the
   client's address (not its port: a client that floats from 500 to 4500 after IKE_SA_INIT,
   RFC 7296 §2.23, keeps reaching the instance that answered it) picks one of 64 buckets,
   each owned by one instance
   (sprayer/keyd.py: rendezvous, so an instance leaving moves only its own clients);
2. UDP dport 4500 whose first 4 payload bytes are zero (the non-ESP marker, RFC 3948 §2.2)
   → the same keyd choice;
3. UDP dport 4500 otherwise (ESP in UDP): mark = spi_mark[first 4 payload bytes], the SPI
   (`@th,64,32`: 32 bits at bit offset 64 of the transport header, just past the UDP header);
4. an SPI the map does not know: mark = jhash(client address . port) over the ready nodes;
   the node that gets it reads the SA from etcd (the "connectivity query" of DESIGN.md).

Marks become routes through `ip rule fwmark M lookup T` (see `routes.py`). Nothing rewrites
the packet, so the receiver sees the client's own source address and port.

Every change is one atomic batch: a chain rebuild (flush + rules, `nft -f -`: the map's
`typeof @th,64,32` key has no JSON form in nftables 1.0) when the set of back ends changes,
and element deletes + adds for SPI changes (JSON, the faster parser for 100 k elements).
Batches go through libnftables in-process when it loads (no fork on the critical path of a
move), else through the `nft` command (libnft.py). A 100 k SPI full sync is a
single batch (measured in bench/failover.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from sprayer.backends import DriverError
from sprayer.libnft import Nft

TABLE = "ipsec_cluster"
FAMILY = "inet"
SPI_MAP = "spi_mark"
CHAIN = "prerouting"
#: IKE and NAT-T ports (RFC 7296 §2, RFC 3948 §2)
IKE_PORT = 500
NATT_PORT = 4500


#: the first 4 bytes of the UDP payload: the SPI, or the zero non-ESP marker
PAYLOAD32 = "@th,64,32"
#: jhash seed, fixed so that several sprayers hash unknown SPIs alike
HASH_SEED = 0x49504353


#: what IKE is hashed on: the client's address only (see 1. above)
IKE_HASH_KEY = "ip saddr"
#: what an unknown SPI is hashed on: the client's address and port
ESP_HASH_KEY = "ip saddr . udp sport"


def _hashed_mark(marks: Sequence[int], key: str) -> str:
    """A mark chosen by jhash over `key` among `marks` (bucket i of `len(marks)` →
    marks[i]); a plain mark when they are all the same."""
    if len(set(marks)) == 1:
        return f"{marks[0]:#x}"
    pairs = ", ".join(f"{i} : {m:#x}" for i, m in enumerate(marks))
    return f"jhash {key} mod {len(marks)} seed {HASH_SEED:#x} map {{ {pairs} }}"


def chain_rules(vip: str, keyd_marks: Sequence[int], node_marks: Sequence[int]) -> list[str]:
    """The prerouting rules (nft syntax) for this VIP, keyd (one mark per IKE hash bucket, or
    per instance) and ready nodes (pure)."""
    if not keyd_marks:
        raise DriverError("no keyd back end: IKE would have nowhere to go")
    to_vip = f"ip daddr {vip} udp dport"
    ike = _hashed_mark(keyd_marks, IKE_HASH_KEY)
    rules = [
        f"{to_vip} {IKE_PORT} meta mark set {ike} accept",
        f"{to_vip} {NATT_PORT} {PAYLOAD32} 0 meta mark set {ike} accept",
        f"{to_vip} {NATT_PORT} meta mark set {PAYLOAD32} map @{SPI_MAP} accept",
    ]
    if node_marks:
        unknown_spi = _hashed_mark(node_marks, ESP_HASH_KEY)
        rules.append(f"{to_vip} {NATT_PORT} meta mark set {unknown_spi} accept")
    return rules


class NftDriver:
    """Keeps the `inet ipsec_cluster` table in line with the plan.

    `netns` runs every command inside that network namespace (the lab and the tests).
    The driver remembers the SPI map it applied; on any failed batch it forgets it, so the
    next `sync_spis` is a full, atomic resync.
    """

    def __init__(self, vip: str, *, table: str = TABLE, netns: str | None = None,
                 nft: Nft | None = None) -> None:
        self.vip = vip
        self.table = table
        self.netns = netns
        self.nft = nft if nft is not None else Nft(netns)
        self._spis: dict[int, int] | None = None
        self._chain: tuple[tuple[int, ...], tuple[int, ...]] | None = None

    # plumbing ----------------------------------------------------------------------------
    def _batch(self, commands: list[dict[str, Any]]) -> None:
        if not commands:
            return
        doc = json.dumps({"nftables": [{"metainfo": {"json_schema_version": 1}}, *commands]})
        self.nft.run(doc, json_input=True)

    def _obj(self, **extra: Any) -> dict[str, Any]:
        return {"family": FAMILY, "table": self.table, **extra}

    # table -------------------------------------------------------------------------------
    def install(self, keyd_marks: Sequence[int], node_marks: Sequence[int]) -> None:
        """Create the table (if missing) and set the chain for these back ends, atomically.

        The SPI map is created empty only when the table is new; an existing map keeps its
        entries, so a restarted sprayer forwards with the last map until it resyncs.
        """
        key = (tuple(keyd_marks), tuple(node_marks))
        if self._chain == key:
            return
        t = f"{FAMILY} {self.table}"
        script = "\n".join([
            f"add table {t}",
            f"add map {t} {SPI_MAP} {{ typeof {PAYLOAD32} : meta mark; }}",
            f"add chain {t} {CHAIN} {{ type filter hook prerouting priority mangle; "
            "policy accept; }",
            f"flush chain {t} {CHAIN}",
            *(f"add rule {t} {CHAIN} {r}" for r in chain_rules(self.vip, keyd_marks,
                                                               node_marks)),
        ]) + "\n"
        try:
            self.nft.run(script, json_input=False)
        except DriverError:
            self._chain = None
            raise
        self._chain = key

    def remove(self) -> None:
        """Delete the table (and with it the SPI map); no error if it is already gone."""
        try:
            self._batch([{"delete": {"table": {"family": FAMILY, "name": self.table}}}])
        except DriverError as e:
            if "No such file" not in str(e):
                raise
        self._spis = None
        self._chain = None

    # SPI map -----------------------------------------------------------------------------
    def sync_spis(self, desired: Mapping[int, int]) -> int:
        """Make the SPI → mark map equal `desired` in one batch; returns changed entries."""
        if self._spis is None:
            cmds: list[dict[str, Any]] = [{"flush": {"map": self._obj(name=SPI_MAP)}}]
            if desired:
                cmds.append(self._elements("add", desired.items()))
            changed = len(desired)
        else:
            gone = [s for s in self._spis if self._spis[s] != desired.get(s)]
            new = [(s, m) for s, m in desired.items() if self._spis.get(s) != m]
            cmds = []
            if gone:
                cmds.append(self._elements("delete", ((s, self._spis[s]) for s in gone)))
            if new:
                cmds.append(self._elements("add", new))
            changed = len(gone) + len(new) - len(set(gone) & {s for s, _ in new})
        try:
            self._batch(cmds)
        except DriverError:
            self._spis = None
            raise
        self._spis = dict(desired)
        return changed

    def _elements(self, verb: str, items: Any) -> dict[str, Any]:
        return {verb: {"element": self._obj(name=SPI_MAP,
                                            elem=[[s & 0xFFFFFFFF, m] for s, m in items])}}

    def read_spis(self) -> dict[int, int]:
        """The SPI map as the kernel holds it (for status output and tests)."""
        out = self.nft.list_json(f"map {FAMILY} {self.table} {SPI_MAP}")
        spis: dict[int, int] = {}
        for item in json.loads(out).get("nftables", []):
            for k, v in (item.get("map", {}).get("elem") or []):
                spis[int(k)] = int(v)
        return spis
