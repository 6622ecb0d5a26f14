"""Rendezvous hashing (highest random weight): which of several names owns a key.

For key k and name n with weight w, score(n, k) = w / -ln(u(n, k)), where u is a uniform draw
in (0, 1) taken from blake2b(n, k) under a personalisation string that keeps one use's
draws apart from another's. The name with the highest score owns k. Each name gets a share of
keys proportional to its weight; when a name leaves only its own keys move, and when one joins
it takes keys only for itself. (Weighted form: Schindelhauer & Schomaker, "Weighted
distributed hash tables", SPAA 2005; the `-w/ln(u)` score is the one Ceph's straw2 uses.)

Used for clients over nodes (`cluster/plan.py`) and IKE hash buckets over keyd instances
(`sprayer/keyd.py`). Pure and stable: the same on every host, never Python's `hash()`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable

_TWO64 = float(2**64)


def uniform(name: str, key: str, person: bytes) -> float:
    """A stable uniform draw in (0, 1) for (name, key)."""
    data = name.encode() + b"\x00" + key.encode()
    digest = hashlib.blake2b(data, digest_size=8, person=person).digest()
    return (int.from_bytes(digest, "big") + 0.5) / _TWO64


def score(name: str, weight: float, key: str, person: bytes) -> float:
    """The weighted rendezvous score of `name` for `key` (higher wins; 0 for no weight)."""
    if weight <= 0:
        return 0.0
    return weight / -math.log(uniform(name, key, person))


def highest(key: str, weighted: Iterable[tuple[str, float]], person: bytes) -> str | None:
    """The name that owns `key` among (name, weight) pairs of positive weight, or None."""
    best: tuple[float, str] | None = None
    for name, weight in weighted:
        if weight <= 0:
            continue
        s = (score(name, weight, key, person), name)
        if best is None or s > best:
            best = s
    return None if best is None else best[1]
