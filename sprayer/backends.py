"""Back-end hosts the sprayer steers to (keyd instances and nodes), and their packet marks.

Every back-end host gets a firewall mark; `ip rule fwmark M lookup T` sends marked packets to
a routing table T holding one route: the VIP via that host's back-end address. Marks are
derived from the host's name with blake2b (stable across sprayer restarts and across several
sprayers), with linear probing when two names collide in the 16-bit space.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from cluster.host import DriverError

#: high half of every mark / routing table id we own ("IP" in ASCII): easy to spot and clean up
MARK_BASE = 0x4950_0000
MARK_MASK = 0xFFFF_0000


@dataclass(frozen=True, slots=True)
class Backend:
    """One host behind the VIP: a keyd instance or a cluster node."""

    #: node id, or "keyd:<address>" for keyd instances
    name: str
    #: back-end address the router reaches it at
    address: str

    def __post_init__(self) -> None:
        try:
            ipaddress.IPv4Address(self.address)
        except ValueError:
            raise DriverError(f"back-end {self.name!r}: not an IPv4 address: "
                              f"{self.address!r}") from None


def keyd_backends(addresses: Iterable[str]) -> list[Backend]:
    return [Backend(f"keyd:{a}", a) for a in addresses]


def _slot(name: str) -> int:
    h = hashlib.blake2b(name.encode(), digest_size=2, person=b"ipsc-mark").digest()
    return int.from_bytes(h, "big")


class MarkAllocator:
    """Hands out one mark per back-end name; a name keeps its mark while it is known."""

    def __init__(self) -> None:
        self._by_name: dict[str, int] = {}

    def mark(self, name: str) -> int:
        if name in self._by_name:
            return self._by_name[name]
        taken = set(self._by_name.values())
        slot = _slot(name)
        while slot in (0, *[m & 0xFFFF for m in taken]) or slot in (253, 254, 255):
            slot = (slot + 1) & 0xFFFF
        m = MARK_BASE | slot
        self._by_name[name] = m
        return m

    def forget(self, keep: Iterable[str]) -> None:
        keep_set = set(keep)
        for name in list(self._by_name):
            if name not in keep_set:
                del self._by_name[name]

    def known(self) -> dict[str, int]:
        return dict(self._by_name)


def backend_marks(marks: MarkAllocator, keyd: Sequence[Backend],
                  nodes: Mapping[str, str]) -> dict[int, Backend]:
    """mark → back end for keyd instances and nodes (node id → back-end address)."""
    all_ = [*keyd, *(Backend(n, a) for n, a in sorted(nodes.items()))]
    marks.forget(b.name for b in all_)
    return {marks.mark(b.name): b for b in all_}
