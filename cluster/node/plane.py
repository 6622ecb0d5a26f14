"""What a data plane does for the node: the interface the ownership core's data-plane actions
(cluster.node.events) are carried out through, whichever plane carries the ESP.

`UserspacePlane` (cluster.node.userspace: UDP socket ⇄ cluster.esp ⇄ TUN) implements it; a
kernel plane (XFRM states, counters read with XFRM_MSG_GETAE and installed with
XFRMA_REPLAY_ESN_VAL) implements the same methods. Calls come from the node's control thread
and must not block on the network or etcd; those that answer (`install_counters`,
`counters`, `moved_counters`) return once the plane has done it. The order of the calls is
the order they take effect in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from cluster.esp import SaCounters
from cluster.node.counters import Traffic
from cluster.node.events import (
    Detach,
    FenceAll,
    Hold,
    InstallCounters,
    NodeAction,
    Reinject,
    Release,
    SaStart,
    SendOn,
    StopSending,
)
from cluster.policy import PacketFilter
from cluster.store import ChildSaRecord

Addresses = frozenset[bytes] | set[bytes]


class SaRefused(Exception):
    """The plane cannot run this Child SA record (suite, keys, selectors): it keeps the SA
    it had, if any."""


class DataPlane(Protocol):
    # -- SAs --------------------------------------------------------------------------------
    def install_sa(self, record: ChildSaRecord, policy: PacketFilter | None, *,
                   moved: bool) -> None:
        """Hold this SA (an update keeps its counters, traffic and, unless the client's
        address changed in the record, its current peer address; `moved`: it changed IKE SA
        and is not sent on until taken over again). Raises SaRefused."""

    def remove_sa(self, spi: int) -> None: ...

    def set_policy(self, name: str, filters: dict[int, PacketFilter | None]) -> None:
        """The SAs bound to policy `name` run these filters from now on."""

    # -- sending ----------------------------------------------------------------------------
    def install_counters(self, starts: dict[int, SaStart]) -> dict[int, SaCounters]:
        """Start these SAs at their take-over counters merged with what they hold
        (`counters.merge_window`), their traffic counted on from what they carried; the
        counters each SA now starts from (SAs the plane does not hold are left out)."""

    def send_on(self, limits: dict[int, int]) -> None:
        """Send on these SAs below each one's send limit (sequence numbers at or above it
        wait); send what was held for their clients as far as the limit allows."""

    def raise_send_limits(self, limits: dict[int, int]) -> None:
        """New limits for SAs sent on (a checkpoint was acknowledged); others are left."""

    def stop_sending(self, spis: frozenset[int]) -> None: ...

    def fence_all(self) -> None:
        """Stop sending on every SA."""

    def set_detached(self, detached: bool) -> None:
        """While detached (lease unconfirmed), send only to clients heard from within the
        fence grace (docs/node.md, "Fencing")."""

    # -- held traffic of clients in hand-off ------------------------------------------------
    def hold(self, addresses: Addresses, for_s: float) -> None:
        """Keep outbound packets to these addresses that no SA sends for, for `for_s`."""

    def release(self, addresses: Addresses) -> None:
        """Stop holding; what was held is dropped (counted `not_owner`)."""

    def reinject(self, addresses: Addresses, hold_s: float = 0.0) -> None:
        """Give what was held back to the kernel (now routed elsewhere); with `hold_s`, keep
        holding what still arrives for that long."""

    # -- counters ---------------------------------------------------------------------------
    def counters(self, spis: Iterable[int]) -> dict[int, tuple[SaCounters, Traffic]]:
        """Each held SA's counters and its traffic over its life."""

    def moved_counters(self, marks: dict[int, tuple[int, int, int]],
                       forced: set[int]) -> dict[int, tuple[SaCounters, Traffic]]:
        """`counters` of the SAs in `marks` whose (out_seq, in_highest, in_bitmap) differ
        from their mark, or that are in `forced`."""

    def after_pending(self, fn: Callable[[], None]) -> None:
        """Run `fn` once every call made before is in effect."""


def carry_out(plane: DataPlane, action: NodeAction) -> dict[int, SaCounters] | None:
    """Do a data-plane action; `InstallCounters` answers with the counters started from.
    Raises TypeError for an action that is not the data plane's."""
    if isinstance(action, Hold):
        plane.hold(action.addresses, action.for_s)
    elif isinstance(action, Release):
        if action.addresses:
            plane.release(action.addresses)
    elif isinstance(action, Reinject):
        plane.reinject(action.addresses)
    elif isinstance(action, StopSending):
        plane.stop_sending(action.spis)
    elif isinstance(action, InstallCounters):
        return plane.install_counters(action.starts)
    elif isinstance(action, SendOn):
        plane.send_on(action.limits)
    elif isinstance(action, FenceAll):
        plane.fence_all()
    elif isinstance(action, Detach):
        plane.set_detached(action.detached)
    else:
        raise TypeError(f"not a data-plane action: {type(action).__name__}")
    return None


def is_plane_action(action: NodeAction) -> bool:
    return isinstance(action, (Hold, Release, Reinject, StopSending, InstallCounters, SendOn,
                               FenceAll, Detach))
