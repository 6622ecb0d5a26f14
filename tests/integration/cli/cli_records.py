"""Records for the CLI tests, written through cluster/store as keyd, nodes and sprayer would."""

from __future__ import annotations

import time
from dataclasses import dataclass

from cluster.store.client import Store
from cluster.store.keyspace import ike_sa_id
from cluster.store.records import Assignment, ChildSaRecord, IkeSaRecord, NodeRecord

KEY_BYTES = bytes(range(0xA0, 0xC0))  # recognisable key material; must never be printed


def node(node_id: str, address: str, state: str = "ready", capacity: int = 100) -> NodeRecord:
    return NodeRecord(node_id, address, capacity, state, 4501, "0.1.0",  # type: ignore[arg-type]
                      time.time() - 60)


def ike(n: int, identity: str, vip: str, keyd: str = "keyd-1") -> IkeSaRecord:
    spi_i, spi_r = 0x1000 + n, 0x2000 + n
    return IkeSaRecord(ike_sa_id(spi_i, spi_r), spi_i, spi_r, f"198.51.100.{10 + n}", 4500,
                       4500, identity, vip, [0xC0000000 + n], keyd, time.time(), KEY_BYTES)


def child(n: int, ike_rec: IkeSaRecord, replaces: int | None = None,
          spi_in: int | None = None) -> ChildSaRecord:
    return ChildSaRecord(
        spi_in or 0xC0000000 + n, 0xD0000000 + n, ike_rec.ike_sa_id, "aes128gcm16", None,
        False, KEY_BYTES[:20], b"", KEY_BYTES[12:32], b"", ["10.20.0.0/16"],
        [f"{ike_rec.virtual_ip}/32"], ike_rec.peer_addr, ike_rec.peer_port, True,
        ike_rec.virtual_ip, ike_rec.identity, time.time(), 3000, 3600, replaces)


def assignment(ike_rec: IkeSaRecord, node_id: str, epoch: int = 1) -> Assignment:
    return Assignment(ike_rec.ike_sa_id, node_id, epoch, "active", None, time.time())


@dataclass
class Cluster:
    store: Store
    endpoint: str
    name: str
    lease: int
    ike: list[IkeSaRecord]
    child: list[ChildSaRecord]

    def args(self, *argv: str) -> list[str]:
        return ["--endpoints", self.endpoint, "--cluster", self.name, *argv]
