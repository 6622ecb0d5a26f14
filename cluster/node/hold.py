"""Outbound packets kept, not dropped, while a client's hand-off completes.

A client in hand-off has no SA this node sends on yet (new owner) or any more (old owner):
what the TUN gives for it is kept per client address, up to HOLD_PACKETS each, until a
deadline; then it is sent (the take-over is done), given back to the kernel (routed to the
new owner) or dropped. Touched by the data-path thread only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from cluster.esp import DropReason
from cluster.node.outbound import OutboundTable, is_network

HOLD_PACKETS = 256  # packets held per client address while its hand-off completes


class HoldBuffer:
    def __init__(self) -> None:
        #: packed client address → (deadline, packets)
        self.held: dict[bytes, tuple[float, list[bytes]]] = {}
        #: the network keys of `held` (clients reached by a subnet selector), for the
        #: longest-prefix match of a destination that is not a held host
        self._nets: OutboundTable[bytes] = OutboundTable()

    def hold(self, addresses: Iterable[bytes], deadline: float) -> None:
        """Hold for these addresses until `deadline` (what is held already stays)."""
        for addr in addresses:
            cur = self.held.get(addr)
            self.held[addr] = (deadline, cur[1] if cur else [])
            if cur is None and is_network(addr):
                self._nets.set(addr, addr)

    def take(self, addr: bytes) -> list[bytes] | None:
        """Stop holding for `addr`; what was held for it (None: it was not held)."""
        cur = self.held.pop(addr, None)
        if cur is None:
            return None
        if is_network(addr):
            self._nets.pop(addr)
        return cur[1]

    def keep(self, addr: bytes, pkt: bytes, now: float, drops: Counter[DropReason]) -> bool:
        """Hold `pkt` for destination `addr` if a hold covers it and has room."""
        cur = self.held.get(addr)
        if cur is None:
            # a client reached by a subnet selector is held under its network's key
            net = self._nets.longest_prefix(addr)
            if net is None:
                return False
            addr = net
            cur = self.held.get(addr)
        if cur is None:
            return False
        if now > cur[0]:
            self.take(addr)
            drops[DropReason.NOT_OWNER] += len(cur[1])
            return False
        if len(cur[1]) >= HOLD_PACKETS:
            return False
        cur[1].append(pkt)
        return True
