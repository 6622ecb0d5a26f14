"""Client virtual IPs from an etcd-backed pool: one `pool/<ip>` lease per client and family.

An IPv4 pool (a connection's `pool`) and an IPv6 pool (its `pool6`) work alike: a client
asking for both holds one lease in each, both naming its IKE SA. Every keyd instance
allocates from the same pools; etcd's create-if-absent is the only lock.
Choice of address, in order:

1. the address the client asked for (CP INTERNAL_IP4_ADDRESS or INTERNAL_IP6_ADDRESS, e.g.
   after a reconnect), if it
   is in the pool and free, or held by the same identity for an IKE SA that no longer exists;
2. an address still leased to the same identity whose IKE SA no longer exists (the client
   came back before its old lease was released);
3. the identity's home address — a stable hash of the identity into the pool — if free, so a
   client that disconnected and returns gets its previous address back when nobody took it;
4. the first free address after the home address.

`claim` only decides: the caller writes the lease in the same etcd transaction as the IKE SA
that gets it, guarded (create-if-absent, or the exact version taken over), so a stale choice
fails the whole step instead of sharing an address. The leases are read from a
`ClusterView` that follows etcd when one is given, else from etcd. `allocate` claims and
writes at once. A lease is released when its IKE SA is deleted or expires (with it, or by
compare-and-delete while it still names that IKE SA).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from cluster.store.client import Guard, Store
from cluster.store.records import IkeSaRecord, PoolLease

from .view import ClusterView, HeldLease, LeaseIndex

log = logging.getLogger("keyd.pool")


class PoolExhausted(Exception):
    """No free address is left in the pool."""


@dataclass(frozen=True, slots=True)
class LeaseClaim:
    """An address chosen for an IKE SA. Write `lease` guarded by `mod_revision` (0: the key
    must not exist; else: the version taken over); `held` means the IKE SA has it already
    and there is nothing to write."""

    lease: PoolLease
    mod_revision: int
    held: bool = False


class AddressPool:
    """Virtual IP leases in `network`, IPv4 or IPv6 (its first and last addresses excluded:
    IPv4's network and broadcast addresses, IPv6's subnet-router anycast address and, for
    symmetry, the last one)."""

    def __init__(self, store: Store, network: str, keyd_id: str,
                 clock: Callable[[], float] = time.time, attempts: int = 16,
                 view: ClusterView | None = None) -> None:
        self.store = store
        self.view = view
        self.network = ipaddress.ip_network(network)
        self.version = self.network.version
        self.keyd_id = keyd_id
        self.clock = clock
        self.attempts = attempts
        self._first = int(self.network.network_address) + 1
        self._size = max(self.network.num_addresses - 2, 1)

    def contains(self, ip: str | None) -> bool:
        try:
            addr = ipaddress.ip_address(ip or "")
        except ValueError:
            return False
        return addr.version == self.version and \
            self._first <= int(addr) < self._first + self._size

    def _address(self, number: int) -> str:
        return str(ipaddress.ip_address(number) if self.version == 4
                   else ipaddress.IPv6Address(number))

    def home(self, identity: str) -> str:
        """The identity's preferred address: a stable hash (never Python's hash())."""
        digest = hashlib.blake2b(identity.encode(), digest_size=8).digest()
        return self._address(self._first + int.from_bytes(digest) % self._size)

    def _leases(self, from_etcd: bool = False) -> ClusterView | LeaseIndex:
        """The leases to decide from: the view (looked up in place), or etcd's."""
        if self.view is not None and self.view.leases_synced and not from_etcd:
            return self.view
        return LeaseIndex(HeldLease(v.record, v.mod_revision)
                          for v in self.store.list(PoolLease).items)

    def claim(self, ike_sa_id: str, identity: str, requested: str | None = None,
              from_etcd: bool = False, initial_contact: bool = False) -> LeaseClaim:
        """Choose an address for the IKE SA (nothing written); PoolExhausted if none is free,
        StoreError if etcd must be asked and does not answer. `from_etcd`: do not trust the
        view (it was behind a moment ago). `initial_contact`: the client says it holds no
        other IKE SA with us (it restarted; RFC 7296 §2.4), so the addresses leased to its
        identity are free for it again, whether or not their old IKE SA is gone yet."""
        leases = self._leases(from_etcd)
        held = leases.of_ike_sa(ike_sa_id, self.version)
        if held is not None:
            return LeaseClaim(held.record, held.mod_revision, held=True)
        for ip, taken in self._candidates(identity, requested, leases, initial_contact):
            lease = PoolLease(ip=ip, ike_sa_id=ike_sa_id, identity=identity,
                              keyd_id=self.keyd_id, leased_at=self.clock())
            return LeaseClaim(lease, taken.mod_revision if taken else 0)
        raise PoolExhausted(f"address pool {self.network} is exhausted")

    def allocate(self, ike_sa_id: str, identity: str, requested: str | None = None) -> str:
        """Lease an address to the IKE SA now; StoreError if etcd fails, PoolExhausted if
        full. Idempotent: an address already leased to this IKE SA is returned again."""
        from_etcd = False
        for _ in range(self.attempts):
            c = self.claim(ike_sa_id, identity, requested, from_etcd)
            if c.held:
                return c.lease.ip
            revision = self.store.commit_revision(
                [c.lease], guards=[Guard(self.store.key_of(c.lease), c.mod_revision)])
            if revision is not None:
                self.written(c, revision)
                return c.lease.ip
            from_etcd = True  # lost a race: the view is behind; ask etcd itself
        raise PoolExhausted(f"address pool {self.network}: no lease after {self.attempts} tries")

    def written(self, claim: LeaseClaim, revision: int = 0) -> None:
        """The claim's lease is in etcd now, written at `revision` (keep the view in step
        until its watch says so: a takeover guard needs the exact revision)."""
        log.debug("address leased", extra={"ip": claim.lease.ip, "ike_sa": claim.lease.ike_sa_id,
                                          "identity": claim.lease.identity})
        if self.view is not None:
            self.view.note_lease(claim.lease, claim.lease.ip, revision)

    def _candidates(self, identity: str, requested: str | None,
                    leases: ClusterView | LeaseIndex,
                    initial_contact: bool = False) -> list[tuple[str, HeldLease | None]]:
        out: list[tuple[str, HeldLease | None]] = []
        stale_own = [v for v in leases.of_identity(identity)
                     if _version(v.record.ip) == self.version
                     and (initial_contact or self._stale(v.record))]
        if requested and self.contains(requested):
            requested = str(ipaddress.ip_address(requested))   # the lease's name: canonical
            held = leases.get(requested)
            if held is None:
                out.append((requested, None))
            elif held in stale_own:
                out.append((requested, held))
        out.extend((v.record.ip, v) for v in stale_own)
        home = int(ipaddress.ip_address(self.home(identity))) - self._first
        for i in range(self._size):
            ip = self._address(self._first + (home + i) % self._size)
            if leases.get(ip) is None:
                out.append((ip, None))
                break
        return out

    def _stale(self, lease: PoolLease) -> bool:
        """The lease's IKE SA is gone from etcd (deleted, or never completed)."""
        return self.store.get(IkeSaRecord, lease.ike_sa_id) is None

    def release(self, ip: str, ike_sa_id: str) -> bool:
        """Remove the lease on `ip` if it still belongs to `ike_sa_id`."""
        held = self.store.get(PoolLease, ip)
        if held is None or held.record.ike_sa_id != ike_sa_id:
            return False
        done = self.store.delete_if(PoolLease, ip, held.mod_revision)
        if done:
            self.released(ip, ike_sa_id)
        return done

    def released(self, ip: str, ike_sa_id: str) -> None:
        log.debug("address released", extra={"ip": ip, "ike_sa": ike_sa_id})
        if self.view is not None:
            self.view.note_lease(None, ip)

    def transfer(self, ip: str, old_ike_sa_id: str, new_ike_sa_id: str) -> bool:
        """Hand the lease on `ip` from an IKE SA to the one that rekeyed it."""
        held = self.store.get(PoolLease, ip)
        if held is None or held.record.ike_sa_id != old_ike_sa_id:
            return False
        moved = PoolLease(ip=ip, ike_sa_id=new_ike_sa_id, identity=held.record.identity,
                          keyd_id=self.keyd_id, leased_at=held.record.leased_at)
        revision = self.store.commit_revision(
            [moved], guards=[Guard(self.store.key_of(moved), held.mod_revision)])
        if revision is not None and self.view is not None:
            self.view.note_lease(moved, ip, revision)
        return revision is not None

    def release_ike_sa(self, ike_sa_id: str) -> list[str]:
        """Release every lease of one IKE SA (used by the sweeper for expired IKE SAs)."""
        return [v.record.ip for v in self.store.list(PoolLease).items
                if v.record.ike_sa_id == ike_sa_id and self.release(v.record.ip, ike_sa_id)]


def _version(ip: str) -> int:
    """4 or 6: the family of a lease's address (0: not an address)."""
    try:
        return ipaddress.ip_address(ip).version
    except ValueError:
        return 0
