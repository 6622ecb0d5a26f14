"""Where a node sends a client's ESP: the address its record names, or where authenticated
ESP came from.

Two ways a client's address changes while it keeps its SAs:

- NAT rebinding (RFC 3948, RFC 7296 §2.23): the client does not know; the node follows an
  authenticated ESP packet from a new address:port (datapath.py `_rebind`).
- MOBIKE (RFC 4555): the client announces the move with UPDATE_SA_ADDRESSES; keyd writes the
  new address into the SA's record once the address answered a return routability check
  (keyd/ike/mobike.py). The record is then the only authority: ESP from elsewhere is not
  followed (an authenticated client could otherwise point the node's traffic at a third
  party), and a record that names a new address moves the SA at once — on the owner, and
  on every node that holds it, so a later take-over sends there too.
"""

from __future__ import annotations

from cluster.store import ChildSaRecord

Address = tuple[str, int]


def peer_after_update(live_peer: Address, old: ChildSaRecord | None,
                      new: ChildSaRecord) -> Address:
    """Where an installed SA sends once its record is written again (`old`: the record it
    was installed from, `live_peer`: where it sends now): the new record's address when the
    record moved the client or the client uses MOBIKE, else the address NAT rebinding
    followed."""
    recorded = (new.peer_addr, new.peer_port)
    if new.mobike or old is None or (old.peer_addr, old.peer_port) != recorded:
        return recorded
    return live_peer


def follows_esp(record: ChildSaRecord) -> bool:
    """Whether authenticated ESP from a new address moves the SA (not for MOBIKE clients:
    their moves come through the record)."""
    return not record.mobike
