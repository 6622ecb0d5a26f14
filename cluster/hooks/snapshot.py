"""What the deriver knew at a fully delivered revision, kept on disk for the compaction case.

Normally a restarted runner reads the cluster as it was at its saved revision from etcd. When
etcd has compacted that revision away, that read is impossible — and without the old state a
re-read of the current one could not tell who *left* while the runner was down (a client-down
or node-down would be lost). So the runner also keeps, next to the revision file, the public
fields the deriver uses for every watched key, written when nothing is in flight (then the
held state is exactly the state at the committed revision). The resync after a compaction
compares it with the current state and sends what differs, deletes included.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.hooks.derive import Change, EventDeriver

FORMAT = 1


@dataclass(frozen=True, slots=True)
class SavedNode:
    id: str
    address: str
    state: str


@dataclass(frozen=True, slots=True)
class SavedIkeSa:
    ike_sa_id: str
    identity: str
    virtual_ip: str | None
    peer_addr: str
    peer_port: int


@dataclass(frozen=True, slots=True)
class SavedChildSa:
    spi_in: int
    spi_out: int
    ike_sa_id: str
    identity: str
    virtual_ip: str | None
    peer_addr: str
    peer_port: int
    replaces: int | None


@dataclass(frozen=True, slots=True)
class SavedAssignment:
    ike_sa_id: str
    node: str
    epoch: int


_SAVED: dict[str, Any] = {"nodes": SavedNode, "ike": SavedIkeSa, "sa": SavedChildSa,
                          "assign": SavedAssignment}


def export(deriver: EventDeriver) -> dict[str, dict[str, dict[str, Any]]]:
    """The deriver's state as JSON-able public fields, by kind and key name."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for kind, cls in _SAVED.items():
        fields = cls.__dataclass_fields__
        tables: dict[str, dict[Any, Any]] = {
            "nodes": deriver.nodes, "ike": deriver.ike, "sa": deriver.child,
            "assign": deriver.assign}
        table = tables[kind]
        out[kind] = {
            (f"{key:08x}" if isinstance(key, int) else key):
                {name: getattr(record, name) for name in fields}
            for key, record in table.items()}
    return out


class SnapshotFile:
    """`<state_file>.snapshot`: {"format", "revision", "state"}; replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def save(self, revision: int, deriver: EventDeriver) -> None:
        doc = {"format": FORMAT, "revision": revision, "state": export(deriver)}
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps(doc, separators=(",", ":")).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)

    def load(self) -> tuple[int, list[Change]] | None:
        """(revision, the state as puts), or None when there is no usable snapshot."""
        try:
            doc = json.loads(self.path.read_text())
            if doc.get("format") != FORMAT:
                return None
            changes = [Change(kind, name, _SAVED[kind](**fields), int(doc["revision"]))
                       for kind, entries in doc["state"].items()
                       for name, fields in entries.items()]
            return int(doc["revision"]), changes
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

