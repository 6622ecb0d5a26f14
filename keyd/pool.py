"""Client virtual IPs from an etcd-backed pool: one `pool/<ip>` lease per client.

Every keyd instance allocates from the same pool; etcd's create-if-absent is the only lock.
Choice of address, in order:

1. the address the client asked for (CP INTERNAL_IP4_ADDRESS, e.g. after a reconnect), if it
   is in the pool and free, or held by the same identity for an IKE SA that no longer exists;
2. an address still leased to the same identity whose IKE SA no longer exists (the client
   came back before its old lease was released);
3. the identity's home address — a stable hash of the identity into the pool — if free, so a
   client that disconnected and returns gets its previous address back when nobody took it;
4. the first free address after the home address.

A lease is released when its IKE SA is deleted or expires (compare-and-delete: only while it
still names that IKE SA).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import time
from collections.abc import Callable

from cluster.store.client import Store, Versioned
from cluster.store.records import IkeSaRecord, PoolLease

log = logging.getLogger("keyd.pool")


class PoolExhausted(Exception):
    """No free address is left in the pool."""


class AddressPool:
    """Virtual IP leases in `network` (network and broadcast addresses excluded)."""

    def __init__(self, store: Store, network: str, keyd_id: str,
                 clock: Callable[[], float] = time.time, attempts: int = 16) -> None:
        self.store = store
        self.network = ipaddress.IPv4Network(network)
        self.keyd_id = keyd_id
        self.clock = clock
        self.attempts = attempts
        self._first = int(self.network.network_address) + 1
        self._size = max(self.network.num_addresses - 2, 1)

    def contains(self, ip: str | None) -> bool:
        try:
            addr = ipaddress.IPv4Address(ip or "")
        except ValueError:
            return False
        return self._first <= int(addr) < self._first + self._size

    def home(self, identity: str) -> str:
        """The identity's preferred address: a stable hash (never Python's hash())."""
        digest = hashlib.blake2b(identity.encode(), digest_size=8).digest()
        return str(ipaddress.IPv4Address(self._first + int.from_bytes(digest) % self._size))

    def allocate(self, ike_sa_id: str, identity: str, requested: str | None = None) -> str:
        """Lease an address to the IKE SA; StoreError if etcd fails, PoolExhausted if full.
        Idempotent: an address already leased to this IKE SA is returned again."""
        for _ in range(self.attempts):
            leases = {v.record.ip: v for v in self.store.list(PoolLease).items}
            for v in leases.values():
                if v.record.ike_sa_id == ike_sa_id:
                    return v.record.ip
            for ip, held in self._candidates(identity, requested, leases):
                lease = PoolLease(ip=ip, ike_sa_id=ike_sa_id, identity=identity,
                                  keyd_id=self.keyd_id, leased_at=self.clock())
                ok = (self.store.create(lease) if held is None
                      else self.store.update_if(lease, held.mod_revision))
                if ok:
                    log.info("address leased", extra={"ip": ip, "ike_sa": ike_sa_id,
                                                       "identity": identity})
                    return ip
                break  # lost a race: read the pool again
            else:
                raise PoolExhausted(f"address pool {self.network} is exhausted")
        raise PoolExhausted(f"address pool {self.network}: no lease after {self.attempts} tries")

    def _candidates(self, identity: str, requested: str | None,
                    leases: dict[str, Versioned[PoolLease]]
                    ) -> list[tuple[str, Versioned[PoolLease] | None]]:
        out: list[tuple[str, Versioned[PoolLease] | None]] = []
        stale_own = [v for v in leases.values()
                     if v.record.identity == identity and self._stale(v.record)]
        if requested and self.contains(requested) and requested != "0.0.0.0":
            held = leases.get(requested)
            if held is None:
                out.append((requested, None))
            elif held in stale_own:
                out.append((requested, held))
        out.extend((v.record.ip, v) for v in stale_own)
        home = int(ipaddress.IPv4Address(self.home(identity))) - self._first
        for i in range(self._size):
            ip = str(ipaddress.IPv4Address(self._first + (home + i) % self._size))
            if ip not in leases:
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
            log.info("address released", extra={"ip": ip, "ike_sa": ike_sa_id})
        return done

    def transfer(self, ip: str, old_ike_sa_id: str, new_ike_sa_id: str) -> bool:
        """Hand the lease on `ip` from an IKE SA to the one that rekeyed it."""
        held = self.store.get(PoolLease, ip)
        if held is None or held.record.ike_sa_id != old_ike_sa_id:
            return False
        moved = PoolLease(ip=ip, ike_sa_id=new_ike_sa_id, identity=held.record.identity,
                          keyd_id=self.keyd_id, leased_at=held.record.leased_at)
        return self.store.update_if(moved, held.mod_revision)

    def release_ike_sa(self, ike_sa_id: str) -> list[str]:
        """Release every lease of one IKE SA (used by the sweeper for expired IKE SAs)."""
        return [v.record.ip for v in self.store.list(PoolLease).items
                if v.record.ike_sa_id == ike_sa_id and self.release(v.record.ip, ike_sa_id)]
