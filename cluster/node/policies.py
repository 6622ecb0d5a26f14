"""The traffic policies a node enforces: `policy/` as the node's watch last told it, and
which filter each Child SA runs (sans-I/O; the agent's control thread owns it).

Which filter an SA bound to policy `name` runs:

- before the node has read `policy/` in full: the snapshot in the SA's record (keyd's copy
  of `policy/<name>` when it made the SA), or, if keyd had none, a filter that drops all;
- afterwards: the live `policy/<name>`. Missing (never written, or removed) or malformed:
  a filter that drops everything, both ways — a node never fails open. An operator's
  change of `policy/<name>` reaches established SAs at once, without a rekey.
"""

from __future__ import annotations

import logging

from cluster.policy import PacketFilter, PolicyError, compile_policy, fail_closed
from cluster.store import ChildSaRecord, Policy

log = logging.getLogger("cluster.node.policies")


class PolicyBook:
    """Policies by name and the SAs bound to each."""

    def __init__(self) -> None:
        #: name -> the record, or why its value is unusable (malformed)
        self._known: dict[str, Policy | str] = {}
        self._filters: dict[str, PacketFilter] = {}
        self._bound: dict[str, set[int]] = {}
        self.synced = False

    # -- policy/ as the watch delivers it --------------------------------------------------
    def put(self, name: str, policy: Policy) -> None:
        if policy.name != name:
            self.malformed(name, f"its name field says {policy.name!r}")
            return
        self._known[name] = policy
        self._filters.pop(name, None)

    def malformed(self, name: str, reason: str) -> None:
        self._known[name] = reason
        self._filters.pop(name, None)
        if self._bound.get(name):
            log.error("policy/%s is malformed (%s): its %d SA(s) drop all traffic until it is "
                      "mended", name, reason, len(self._bound[name]))

    def delete(self, name: str) -> None:
        self._known.pop(name, None)
        self._filters.pop(name, None)
        if self._bound.get(name):
            log.warning("policy/%s removed: its %d SA(s) drop all traffic (bind them to "
                        "another policy or write it again)", name, len(self._bound[name]))

    def resynced(self, present: set[str]) -> None:
        """A full read of `policy/`: anything else known is gone; from now on the live
        records decide."""
        for name in [n for n in self._known if n not in present]:
            self.delete(name)
        self.synced = True
        self._filters.clear()

    # -- SAs -------------------------------------------------------------------------------
    def filter_for(self, record: ChildSaRecord) -> PacketFilter | None:
        """The filter `record`'s SA runs; None: it has no policy (a full tunnel)."""
        name = record.policy
        if name is None:
            return None
        if self.synced or name in self._known:
            return self._live(name)
        if record.policy_mode is None:
            return fail_closed(name)
        try:
            return compile_policy(name, record.policy_mode, record.policy_allowed,
                                  record.policy_denied)
        except PolicyError:  # the record's validation parsed these rules already
            return fail_closed(name)

    def _live(self, name: str) -> PacketFilter:
        f = self._filters.get(name)
        if f is None:
            p = self._known.get(name)
            f = fail_closed(name)
            if isinstance(p, Policy):
                try:
                    f = compile_policy(name, p.mode, p.allowed, p.denied)
                except PolicyError as e:  # validated on decode: only if that ever changes
                    log.error("policy/%s: %s: its SAs drop all traffic", name, e)
            self._filters[name] = f
        return f

    def bind(self, spi_in: int, old: ChildSaRecord | None, new: ChildSaRecord) -> None:
        if old is not None and old.policy != new.policy:
            self.unbind(spi_in, old)
        if new.policy is not None:
            self._bound.setdefault(new.policy, set()).add(spi_in)

    def unbind(self, spi_in: int, record: ChildSaRecord) -> None:
        if record.policy is None:
            return
        spis = self._bound.get(record.policy)
        if spis is not None:
            spis.discard(spi_in)
            if not spis:
                del self._bound[record.policy]

    def bound(self, name: str) -> list[int]:
        """The SAs bound to policy `name`."""
        return list(self._bound.get(name, ()))

    def names_bound(self) -> list[str]:
        return list(self._bound)

    def failing_closed(self) -> list[str]:
        """Policies SAs are bound to that cannot be used (missing or malformed), once the
        node has read `policy/`."""
        if not self.synced:
            return []
        return sorted(n for n in self._bound if not isinstance(self._known.get(n), Policy))
