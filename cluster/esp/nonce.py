"""Explicit IVs for AES-GCM and ChaCha20-Poly1305 that no two senders of one SA can repeat.

Why this is needed. With AES-GCM (RFC 4106) and ChaCha20-Poly1305 (RFC 7634) the nonce is
`salt | explicit IV`, and the salt comes with the key, so every node holding a Child SA has
the same key *and* the same salt. A repeated (key, nonce) pair leaks the XOR of two plaintexts
and, for GCM, the authentication key (forgeries follow). RFC 4106 §3.1 suggests the sequence
number as the IV; in a cluster that is unsafe: after an unplanned hand-off the new owner starts
at `checkpoint + jump`, and in a split brain the old owner may still be sending the same
numbers. The sequence number is therefore never used as the IV here.

The construction. The explicit IV is `prefix (4 bytes) | counter (4 bytes, big-endian)`:

- `prefix` identifies one *sending incarnation*: the node agent obtains it from etcd at
  start-up as the cluster-wide revision of its own registration write (`nodes/<id>`). etcd
  revisions are unique across the cluster (every write has its own), so two incarnations —
  two nodes, or one node before and after a restart — never hold the same prefix while fewer
  than 2**32 etcd writes happen within one SA's lifetime (etcd sustains far below 10**5
  writes/s; a Child SA lives an hour by default, < 4 * 10**8 writes).
- `counter` belongs to that incarnation alone: one `IvSource` per process, shared by every SA
  it sends on, strictly increasing, never reset while the prefix is held. Re-installing an SA
  or moving ownership back and forth does not reset it. When it would pass 2**32 - 1 the
  source refuses (EspUsageError) until `renew` gives it a fresh prefix.

The argument. Take two packets sealed under one SA key. If different incarnations sealed them,
their prefixes differ, so their IVs differ. If one incarnation sealed both, it drew two
different counter values (the counter only increases and never wraps under one prefix), so
their IVs differ. Hence no (key, nonce) pair repeats — whatever the sequence numbers, the
ownership epochs, or whether etcd is reachable — as long as prefixes are unique, which is the
node agent's obligation above. AES-CBC does not use this: its IV must be unpredictable and is
random (RFC 3602 §2.3).
"""

from __future__ import annotations

from cluster.esp.errors import EspUsageError

PREFIX_LEN = 4
COUNTER_LIMIT = 1 << 32


class IvSource:
    """The one IV counter of a sending incarnation (see the module docstring)."""

    __slots__ = ("_counter", "_prefix")

    def __init__(self, prefix: bytes) -> None:
        self._prefix = b""
        self._counter = 0
        self.renew(prefix)

    @property
    def prefix(self) -> bytes:
        return self._prefix

    @property
    def used(self) -> int:
        """IVs drawn under the current prefix."""
        return self._counter

    def renew(self, prefix: bytes) -> None:
        """Start over under a new, never-used prefix."""
        if len(prefix) != PREFIX_LEN:
            raise EspUsageError(f"IV prefix must be {PREFIX_LEN} bytes, got {len(prefix)}")
        if prefix == self._prefix:
            raise EspUsageError("an IV prefix can be used only once")
        self._prefix = prefix
        self._counter = 0

    def next_iv(self) -> bytes:
        """A fresh 8-byte explicit IV, never returned before by any incarnation."""
        c = self._counter
        if c >= COUNTER_LIMIT:
            raise EspUsageError("IV counter exhausted: renew the prefix before sending")
        self._counter = c + 1
        return self._prefix + c.to_bytes(4)


def prefix_from_revision(revision: int) -> bytes:
    """The IV prefix of an incarnation whose registration write got etcd `revision`."""
    if revision <= 0:
        raise EspUsageError(f"not an etcd revision: {revision}")
    return (revision % COUNTER_LIMIT).to_bytes(PREFIX_LEN)
