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

Reading the map back: a listing is a netlink dump in many parts, and for each part the kernel
walks the map's hash table anew and skips, *by count*, the elements it already sent. While the
table is being resized (the kernel grows and shrinks it in a background worker after a large
change) the walk order changes between parts, so one listing can hold some elements twice and
leave as many out (seen here: 100,000 elements listed, 93,520 distinct; the left-out ones were
all found by exact lookup, and the next listing was whole). The map itself is complete; only
the listing is not. `read_spis` therefore takes a listing with a repeated element as torn and
reads again; `check_spis` compares a whole listing with what the driver applied, so that a map
that really differs (edited or flushed behind the sprayer's back) is noticed and repaired.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cluster.host import DriverError
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


#: how often a torn listing (see above) is read again, and the pause between reads
READ_TRIES = 20
READ_RETRY_S = 0.05


@dataclass(frozen=True, slots=True)
class MapDiff:
    """How the kernel's SPI map differs from what the driver applied."""

    missing: int      # applied, not in the kernel's map
    wrong: int        # in both, with another mark
    extra: int        # in the kernel's map, not applied

    @property
    def total(self) -> int:
        return self.missing + self.wrong + self.extra


def map_diff(applied: Mapping[int, int], held: Mapping[int, int]) -> MapDiff:
    missing = sum(1 for s in applied if s not in held)
    wrong = sum(1 for s, m in applied.items() if s in held and held[s] != m)
    return MapDiff(missing, wrong, sum(1 for s in held if s not in applied))


@dataclass(frozen=True, slots=True)
class SpiMapCheck:
    """One comparison of the kernel's SPI map with `applied`, the map `driver` had applied at
    `generation`. `run()` reads the kernel's map (slow for a large map: meant for a thread of
    its own); `current()` says whether the driver is still at that generation, without which
    a difference means nothing."""

    driver: NftDriver
    generation: int
    applied: dict[int, int]
    reader: NftDriver

    def run(self) -> MapDiff:
        return map_diff(self.applied, self.reader.read_spis())

    def current(self) -> bool:
        return self.driver.generation == self.generation and self.driver.applied is not None


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
        #: bumped by every sync_spis that changes the map (a check started before is void)
        self.generation = 0
        self._reader: NftDriver | None = None
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

    def close(self) -> None:
        if self._reader is not None:
            self._reader.nft.close()
            self._reader = None

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
        if cmds:
            self.generation += 1
        try:
            self._batch(cmds)
        except DriverError:
            self._spis = None
            raise
        self._spis = dict(desired)
        return changed

    @property
    def applied(self) -> dict[int, int] | None:
        """The SPI map this driver last applied (None: unknown, the next sync is full)."""
        return self._spis

    def _elements(self, verb: str, items: Any) -> dict[str, Any]:
        return {verb: {"element": self._obj(name=SPI_MAP,
                                            elem=[[s & 0xFFFFFFFF, m] for s, m in items])}}

    def read_spis(self) -> dict[int, int]:
        """The SPI map as the kernel holds it: a whole listing (one with no element twice,
        see the module's docstring), read again while it is torn; DriverError if none is
        whole after READ_TRIES reads."""
        for attempt in range(READ_TRIES):
            if attempt:
                time.sleep(READ_RETRY_S)
            listed = self._list_spis()
            spis = dict(listed)
            if len(spis) == len(listed):
                return spis
        raise DriverError(f"nft: every one of {READ_TRIES} listings of the SPI map was torn "
                          f"(last: {len(listed)} elements, {len(spis)} distinct)")

    def _list_spis(self) -> list[tuple[int, int]]:
        out = self.nft.list_json(f"map {FAMILY} {self.table} {SPI_MAP}")
        try:
            return [(int(k), int(v)) for item in json.loads(out).get("nftables", [])
                    for k, v in (item.get("map", {}).get("elem") or [])]
        except (ValueError, TypeError, AttributeError) as e:
            raise DriverError(f"nft: unreadable listing of the SPI map ({e})") from None

    def check(self) -> SpiMapCheck | None:
        """A comparison of the kernel's map with what this driver applied, to run on another
        thread (it reads through a driver of its own); None while nothing is applied."""
        if self._spis is None:
            return None
        if self._reader is None:
            self._reader = self.reader()
        return SpiMapCheck(self, self.generation, dict(self._spis), self._reader)

    def reader(self) -> NftDriver:
        """A driver for reading only, with its own nftables context (for another thread)."""
        return NftDriver(self.vip, table=self.table, netns=self.netns,
                         nft=Nft(self.netns, use_library=self.nft.in_process))
