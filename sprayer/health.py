"""Node health as the sprayer sees it: a pure, damped up/down tracker.

The probe's wire format, and the node's side that answers it, are `cluster/probe.py`.

A node is down after `misses` consecutive unanswered probes, or at once when its lease is lost
(its nodes/ record disappears). Damping: a node that went down comes back only after `rise`
consecutive answers *and* a hold-down that doubles with each recent flap (capped), so a node
that bounces does not bounce its clients. That holds for a node whose lease was lost too (cut
off, then back with a new lease): it is remembered as down for the flap window, so it comes
back through the same damping, not presumed alive like a node never seen. No sockets and no
clock here: `now` is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class _Node:
    alive: bool = True
    misses: int = 0
    streak: int = 0
    down_at: float | None = None
    flaps: list[float] = field(default_factory=list)
    draining: bool = False


class HealthTracker:
    """Up/down verdicts per node from probe results and lease presence.

    `misses`: consecutive missed probes that make a node down (default 3).
    `rise`: consecutive answers a down node needs to come back.
    `hold_down_s`: minimum time down; doubled for each further flap within `flap_window_s`,
    at most `max_hold_down_s`.
    """

    def __init__(self, misses: int = 3, rise: int = 3, hold_down_s: float = 1.0,
                 max_hold_down_s: float = 30.0, flap_window_s: float = 120.0) -> None:
        self.misses = misses
        self.rise = rise
        self.hold_down_s = hold_down_s
        self.max_hold_down_s = max_hold_down_s
        self.flap_window_s = flap_window_s
        self._nodes: dict[str, _Node] = {}
        #: nodes whose lease was lost, kept (down) for the flap window
        self._gone: dict[str, _Node] = {}

    def add(self, node_id: str, now: float | None = None) -> None:
        """A node with a lease appeared: presumed alive until probes say otherwise — unless
        it lost its lease within the flap window (given `now`): then it is down until `rise`
        answers and its hold-down."""
        if node_id in self._nodes:
            return
        n = self._gone.pop(node_id, None)
        if n is not None and (now is None or now - (n.down_at or 0.0) >= self.flap_window_s):
            n = None
        self._nodes[node_id] = n if n is not None else _Node()

    def lease_lost(self, node_id: str, now: float) -> None:
        """Its nodes/ record is gone: down at once, and no longer a member."""
        n = self._nodes.pop(node_id, None)
        if n is None:
            return
        if n.alive:
            n.alive = False
            n.down_at = now
            n.flaps = [t for t in n.flaps if now - t < self.flap_window_s] + [now]
        n.misses = n.streak = 0
        self._gone = {k: g for k, g in self._gone.items()
                      if now - (g.down_at or 0.0) < self.flap_window_s}
        self._gone[node_id] = n

    def answered(self, node_id: str, now: float, draining: bool = False) -> None:
        n = self._nodes.get(node_id)
        if n is None:
            return
        n.misses = 0
        n.streak += 1
        n.draining = draining
        if not n.alive and n.streak >= self.rise and now >= self._up_after(n):
            n.alive = True

    def missed(self, node_id: str, now: float) -> None:
        n = self._nodes.get(node_id)
        if n is None:
            return
        n.streak = 0
        n.misses += 1
        if n.alive and n.misses >= self.misses:
            n.alive = False
            n.down_at = now
            n.flaps = [t for t in n.flaps if now - t < self.flap_window_s] + [now]

    def _up_after(self, n: _Node) -> float:
        extra = max(0, len(n.flaps) - 1)
        hold = min(self.max_hold_down_s, self.hold_down_s * (2 ** extra))
        return (n.down_at or 0.0) + hold

    def alive(self, node_id: str) -> bool:
        n = self._nodes.get(node_id)
        return n is not None and n.alive

    def draining(self, node_id: str) -> bool:
        n = self._nodes.get(node_id)
        return n is not None and n.draining

    def nodes(self) -> list[str]:
        return sorted(self._nodes)
