"""From keyspace changes to hook events: a sans-I/O core, no etcd, no clock.

The deriver keeps the part of the keyspace it needs (nodes, IKE SAs, Child SAs, assignments)
so that a delete — which carries no value — can still say who went away, and so that a put can
be told apart from an update. `prime()` loads a snapshot without emitting anything (the state
as of the revision delivery resumes from); `apply()` turns one change into zero or more events.

Which change means what:

| change                                         | event          |
| ---------------------------------------------- | -------------- |
| `assign/<ike>` appears                          | client-up (1)  |
| `assign/<ike>` names another node               | client-moved   |
| `ike/<ike>` deleted                             | client-down (1)|
| `sa/<spi>` appears with `replaces` set          | sa-rekeyed     |
| `nodes/<id>` appears                            | node-up (+ node-draining)  |
| `nodes/<id>` state ready → draining             | node-draining  |
| `nodes/<id>` deleted (lease expired or removed) | node-down      |

(1) Not for an IKE SA rekey: keyd writes the client's new IKE SA and its assignment, then
deletes the old ones. An IKE SA of the same client (same identity and virtual IP, or same
identity and outer address without one) that is still assigned makes the new assignment a
continuation (client-moved if the node differs, else nothing) and the old IKE SA's delete
silent: a hook that announces a client's route must not withdraw it on a rekey.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from cluster.hooks.event import (
    CLIENT_DOWN,
    CLIENT_MOVED,
    CLIENT_UP,
    NODE_DOWN,
    NODE_DRAINING,
    NODE_UP,
    SA_REKEYED,
    HookEvent,
    format_peer,
)

WATCHED_KINDS = ("nodes", "ike", "sa", "assign")


class NodeLike(Protocol):
    id: str
    address: str
    state: str


class IkeSaLike(Protocol):
    ike_sa_id: str
    peer_addr: str
    peer_port: int
    identity: str
    virtual_ip: str | None


class ChildSaLike(Protocol):
    spi_in: int
    spi_out: int
    ike_sa_id: str
    peer_addr: str
    peer_port: int
    identity: str
    virtual_ip: str | None
    replaces: int | None


class AssignmentLike(Protocol):
    ike_sa_id: str
    node: str
    epoch: int


@dataclass(frozen=True, slots=True)
class Change:
    """One put (record set) or delete (record None) of a watched key, at `revision`."""

    kind: str
    """The key kind: one of WATCHED_KINDS (others are ignored)."""
    name: str
    """The key's last part: node id, IKE SA id, or SPI as 8 hex digits."""
    record: Any | None
    revision: int


class EventDeriver:
    """Keyspace changes in, HookEvents out. Feed changes in revision order."""

    def __init__(self, cluster: str = "") -> None:
        self.cluster = cluster
        self.nodes: dict[str, NodeLike] = {}
        self.ike: dict[str, IkeSaLike] = {}
        self.child: dict[int, ChildSaLike] = {}
        self._children: dict[str, set[int]] = {}   # ike_sa_id -> spi_in of its Child SAs
        self._by_client: dict[tuple[str, ...], set[str]] = {}   # client key -> ike_sa_ids
        self.assign: dict[str, AssignmentLike] = {}

    # -- state --------------------------------------------------------------------------

    def prime(self, changes: Iterable[Change]) -> None:
        """Load a snapshot (puts) as the known state, emitting nothing."""
        for change in changes:
            if change.kind in WATCHED_KINDS and change.record is not None:
                self._table(change.kind)[self._key(change)] = change.record
                if change.kind == "sa":
                    self._children.setdefault(change.record.ike_sa_id, set()).add(
                        change.record.spi_in)
                elif change.kind == "ike":
                    self._by_client.setdefault(self._client_key(change.record), set()).add(
                        change.name)

    def names(self, kind: str) -> set[str]:
        """The key names of `kind` the deriver holds (SPIs as 8 hex digits)."""
        if kind not in WATCHED_KINDS:
            return set()
        return {f"{k:08x}" if isinstance(k, int) else k for k in self._table(kind)}

    # -- changes ------------------------------------------------------------------------

    def apply(self, change: Change) -> list[HookEvent]:
        """The events one change causes (often none), and the held state updated."""
        handler = {
            "nodes": self._node, "ike": self._ike, "sa": self._child, "assign": self._assign,
        }.get(change.kind)
        return handler(change) if handler else []

    def _node(self, change: Change) -> list[HookEvent]:
        before = self.nodes.get(change.name)
        node: NodeLike | None = change.record
        events: list[HookEvent] = []
        if node is None:
            self.nodes.pop(change.name, None)
            events.append(self._node_event(NODE_DOWN, change.name, before, change.revision))
            return events
        self.nodes[change.name] = node
        if before is None:
            events.append(self._node_event(NODE_UP, change.name, node, change.revision))
        if node.state == "draining" and (before is None or before.state != "draining"):
            events.append(self._node_event(NODE_DRAINING, change.name, node, change.revision))
        return events

    def _assign(self, change: Change) -> list[HookEvent]:
        before = self.assign.get(change.name)
        assignment: AssignmentLike | None = change.record
        if assignment is None:
            self.assign.pop(change.name, None)
            return []
        self.assign[change.name] = assignment
        if before is None:
            twin = self._twin(change.name)
            if twin is not None:
                # An IKE SA rekey (RFC 7296 §2.8): the same client under a new IKE SA id.
                # Not a new client; at most it changed node.
                old_node = self.assign[twin].node
                if old_node == assignment.node:
                    return []
                return [self._client_event(CLIENT_MOVED, change.name, change.revision,
                                           old_node=old_node)]
            return [self._client_event(CLIENT_UP, change.name, change.revision)]
        if before.node != assignment.node:
            return [self._client_event(CLIENT_MOVED, change.name, change.revision,
                                       old_node=before.node)]
        return []

    def _ike(self, change: Change) -> list[HookEvent]:
        if change.record is not None:
            before = self.ike.get(change.name)
            if before is not None:
                self._by_client.get(self._client_key(before), set()).discard(change.name)
            self.ike[change.name] = change.record
            self._by_client.setdefault(self._client_key(change.record), set()).add(change.name)
            return []
        if change.name not in self.ike and change.name not in self.assign:
            # Never seen: nothing to tell beyond the id, but still at-least-once.
            return [HookEvent(CLIENT_DOWN, change.revision, self.cluster,
                              ike_sa_id=change.name)]
        twin = self._twin(change.name)
        event = None if twin is not None else self._client_event(
            CLIENT_DOWN, change.name, change.revision)
        gone = self.ike.pop(change.name, None)
        if gone is not None:
            self._by_client.get(self._client_key(gone), set()).discard(change.name)
        # The old IKE SA of a rekey going away is silent: its client stays, under the new one.
        return [event] if event is not None else []

    def _child(self, change: Change) -> list[HookEvent]:
        spi = int(change.name, 16)
        child: ChildSaLike | None = change.record
        if child is None:
            gone = self.child.pop(spi, None)
            if gone is not None:
                self._children.get(gone.ike_sa_id, set()).discard(spi)
            return []
        before = self.child.get(spi)
        self.child[spi] = child
        if before is not None and before.ike_sa_id != child.ike_sa_id:  # re-parented
            self._children.get(before.ike_sa_id, set()).discard(spi)
        self._children.setdefault(child.ike_sa_id, set()).add(spi)
        if before is not None or child.replaces is None:
            return []
        ike = self.ike.get(child.ike_sa_id)
        assignment = self.assign.get(child.ike_sa_id)
        return [HookEvent(
            SA_REKEYED, change.revision, self.cluster,
            client_id=child.identity or (ike.identity if ike else None),
            ike_sa_id=child.ike_sa_id,
            virtual_ip=child.virtual_ip or (ike.virtual_ip if ike else None),
            peer=format_peer(child.peer_addr, child.peer_port),
            node=assignment.node if assignment else None,
            epoch=assignment.epoch if assignment else None,
            spi_in=child.spi_in, spi_out=child.spi_out, old_spi_in=child.replaces,
        )]

    # -- helpers ------------------------------------------------------------------------

    @staticmethod
    def _client_key(ike: IkeSaLike) -> tuple[str, ...]:
        """Who the client is across IKE SAs: its identity and virtual IP (unique in the
        pool), or its identity and outer address when it has no virtual IP."""
        if ike.virtual_ip:
            return (ike.identity, ike.virtual_ip)
        return (ike.identity, ike.peer_addr, str(ike.peer_port))

    def _twin(self, ike_id: str) -> str | None:
        """Another assigned IKE SA of the same client (the other side of an IKE SA rekey)."""
        ike = self.ike.get(ike_id)
        if ike is None:
            return None
        for other_id in sorted(self._by_client.get(self._client_key(ike), ())):
            if other_id != ike_id and other_id in self.assign:
                return other_id
        return None

    def _client_event(self, kind: str, ike_id: str, revision: int,
                      old_node: str | None = None) -> HookEvent:
        ike = self.ike.get(ike_id)
        assignment = self.assign.get(ike_id)
        child = self._newest_child(ike_id)
        identity = ike.identity if ike else (child.identity if child else None)
        virtual_ip = ike.virtual_ip if ike else (child.virtual_ip if child else None)
        if ike:
            peer = format_peer(ike.peer_addr, ike.peer_port)
        else:
            peer = format_peer(child.peer_addr, child.peer_port) if child else None
        return HookEvent(
            kind, revision, self.cluster, client_id=identity, ike_sa_id=ike_id,
            virtual_ip=virtual_ip, peer=peer,
            node=assignment.node if assignment else None, old_node=old_node,
            epoch=assignment.epoch if assignment else None,
            spi_in=child.spi_in if child else None, spi_out=child.spi_out if child else None,
        )

    def _newest_child(self, ike_id: str) -> ChildSaLike | None:
        """The Child SA of this IKE SA that no other one replaces (the one in use)."""
        mine = [self.child[spi] for spi in sorted(self._children.get(ike_id, ()))
                if spi in self.child]
        replaced = {c.replaces for c in mine}
        current = [c for c in mine if c.spi_in not in replaced]
        pick = current or mine
        return pick[-1] if pick else None

    def _node_event(self, kind: str, node_id: str, node: NodeLike | None,
                    revision: int) -> HookEvent:
        return HookEvent(kind, revision, self.cluster, node=node_id,
                         node_address=node.address if node else None)

    def _table(self, kind: str) -> dict[Any, Any]:
        tables: Mapping[str, dict[Any, Any]] = {
            "nodes": self.nodes, "ike": self.ike, "sa": self.child, "assign": self.assign,
        }
        return tables[kind]

    @staticmethod
    def _key(change: Change) -> Any:
        return int(change.name, 16) if change.kind == "sa" else change.name
