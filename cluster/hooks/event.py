"""The events a hook receives, and how each one is presented to a hook.

A hook executable gets the event as environment variables (in the spirit of strongSwan's
updown script: one `HOOK_*` variable per field, always set, empty when not known) and as one
JSON object on stdin; a webhook gets the same JSON object as the POST body. The JSON schema is
stable: fields are only ever added.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from cluster.store.keyspace import spi_hex

CLIENT_UP = "client-up"
CLIENT_DOWN = "client-down"
CLIENT_MOVED = "client-moved"
SA_REKEYED = "sa-rekeyed"
NODE_UP = "node-up"
NODE_DOWN = "node-down"
NODE_DRAINING = "node-draining"

EVENT_TYPES = (CLIENT_UP, CLIENT_DOWN, CLIENT_MOVED, SA_REKEYED, NODE_UP, NODE_DOWN,
               NODE_DRAINING)

SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class HookEvent:
    """One cluster event, derived from the etcd keyspace at `revision`."""

    event: str
    """One of EVENT_TYPES."""
    revision: int
    """The etcd revision of the change that caused the event (delivery resumes from it)."""
    cluster: str = ""
    """The cluster name (keys live under <prefix>/<cluster>/)."""
    client_id: str | None = None
    """The client's IKE identity (IDi), as keyd recorded it."""
    ike_sa_id: str | None = None
    """The IKE SA id: initiator SPI then responder SPI, 16 hex digits each."""
    virtual_ip: str | None = None
    """The client's virtual IP from the pool, if it has one."""
    peer: str | None = None
    """The client's outer address as `addr:port` (after NAT, as the cluster sees it)."""
    node: str | None = None
    """The node concerned: the owner of the client, or the node that came, went or drains."""
    old_node: str | None = None
    """client-moved: the node that owned the client before."""
    node_address: str | None = None
    """node-*: the node's back-end address."""
    epoch: int | None = None
    """client-*: the assignment epoch (the fencing token) when the event was derived."""
    spi_in: int | None = None
    """The Child SA's inbound SPI (the one the cluster receives with)."""
    spi_out: int | None = None
    """The Child SA's outbound SPI (the client's)."""
    old_spi_in: int | None = None
    """sa-rekeyed: the inbound SPI of the Child SA this one replaces."""

    def to_json(self) -> dict[str, Any]:
        """The stable JSON object: every field, SPIs as 8 hex digits, plus `schema`."""
        doc = asdict(self)
        for name in ("spi_in", "spi_out", "old_spi_in"):
            doc[name] = spi_hex(doc[name])
        doc["schema"] = SCHEMA_VERSION
        return doc

    def body(self) -> bytes:
        """The JSON object as bytes: a hook's stdin and a webhook's POST body."""
        return json.dumps(self.to_json(), sort_keys=True).encode() + b"\n"

    def env(self) -> dict[str, str]:
        """`HOOK_<FIELD>` for every field, always set (empty when unknown)."""
        out: dict[str, str] = {}
        for name, value in self.to_json().items():
            if name == "schema":
                continue
            out[f"HOOK_{name.upper()}"] = "" if value is None else str(value)
        out["HOOK_PEER_ADDR"], out["HOOK_PEER_PORT"] = split_peer(self.peer)
        return out


def format_peer(addr: str | None, port: int | None) -> str | None:
    """`addr:port` (IPv6 in brackets), or None when the address is not known."""
    if not addr:
        return None
    host = f"[{addr}]" if ":" in addr else addr
    return f"{host}:{port}" if port else host


def split_peer(peer: str | None) -> tuple[str, str]:
    """(address, port) of an `addr:port` / `[v6]:port` / bare address; empty when unknown."""
    if not peer:
        return "", ""
    if peer.startswith("["):
        host, _, rest = peer[1:].partition("]")
        return host, rest.removeprefix(":")
    if peer.count(":") == 1:
        host, _, port = peer.partition(":")
        return host, port
    return peer, ""
