"""keyd binds each Child SA it writes to a traffic policy (cluster.policy.binding): by the
client's identity here (no connection names one), on establishment and through Child SA and
IKE SA rekeys; policy/ changes reach keyd's view; a malformed policy never fails open."""

from __future__ import annotations

import time

from cluster.store.client import Store
from cluster.store.records import ChildSaRecord, NodeRecord, Policy
from cluster.store.watch import wait_for
from keyd.client import IkeClient

from .conftest import GATEWAY_ID, PSK, KeydSetup


def _node(store: Store) -> None:
    store.put(NodeRecord(id="node-a", address="10.30.0.11", capacity=100, state="ready",
                         health_port=4501, version="test", started_at=time.time()))


def _client(k: object, identity: str) -> IkeClient:
    return IkeClient.psk(PSK, identity, GATEWAY_ID, "127.0.0.2",
                         ("127.0.0.1", k.ike_port), k.natt_port)  # type: ignore[attr-defined]


def test_child_sas_carry_the_identitys_policy(keyd_setup: KeydSetup, store: Store) -> None:
    _node(store)
    store.put(Policy("guest", ["*@guests.test"], "guest", ["10.20.0.53/32 udp/53"],
                     ["tcp/25"]))
    k = keyd_setup.start("keyd-1")
    with _client(k, "visitor@guests.test") as c:
        c.connect()
        child = c.children()[0].child
        sa = store.get(ChildSaRecord, child.spi_out)
        assert sa is not None
        r = sa.record
        assert (r.policy, r.policy_mode, r.policy_allowed, r.policy_denied) == (
            "guest", "guest", ["10.20.0.53/32 udp/53"], ["tcp/25"])
        # the operator narrows it: the next Child SA (a rekey) carries the new snapshot
        store.put(Policy("guest", ["*@guests.test"], "split", ["10.20.0.53/32 udp/53"]))
        time.sleep(0.5)  # keyd's view follows policy/ by watch
        c.rekey_child(child.spi_in, pfs=False)
        fresh = store.get(ChildSaRecord, c.children()[-1].child.spi_out)
        assert fresh is not None and fresh.record.policy == "guest"
        assert fresh.record.policy_mode == "split" and fresh.record.policy_denied == []
        # an IKE SA rekey moves the Child SA: still bound
        c.rekey_ike()
        spi = c.children()[-1].child.spi_out
        assert wait_for(lambda: (v := store.get(ChildSaRecord, spi)) is not None
                        and v.record.ike_sa_id == c.core.ike_sa_id, timeout_s=5)
        moved = store.get(ChildSaRecord, spi)
        assert moved is not None and moved.record.policy == "guest"
        c.delete()


def test_other_identities_get_no_policy_and_malformed_never_opens(
        keyd_setup: KeydSetup, store: Store) -> None:
    _node(store)
    store.put(Policy("guest", ["*@guests.test"], "guest"))
    k = keyd_setup.start("keyd-1")
    with _client(k, "alice@clients.test") as c:
        c.connect()
        sa = store.get(ChildSaRecord, c.children()[0].child.spi_out)
        assert sa is not None and sa.record.policy is None and sa.record.policy_mode is None
        c.delete()
    # policy/guest goes bad: a guest is still bound to it (by its last valid identities),
    # without a snapshot, so the nodes drop its traffic rather than give a full tunnel
    store.raw_put(store.keyspace.policy("guest"), b'{"v":1,"name":"guest","mode":"open"}')
    time.sleep(0.5)
    with _client(k, "visitor@guests.test") as c:
        c.connect()
        sa = store.get(ChildSaRecord, c.children()[0].child.spi_out)
        assert sa is not None and sa.record.policy == "guest"
        assert sa.record.policy_mode is None
        c.delete()
    assert "missing or malformed" in k.log.read_text()


def test_the_connections_policy_wins_over_identity_patterns(keyd_setup: KeydSetup,
                                                            store: Store) -> None:
    """A connection that names a policy binds every Child SA it makes to it, whatever the
    policies' identity patterns say."""
    _node(store)
    store.put(Policy("guest", ["*@guests.test"], "guest"))
    store.put(Policy("lockdown", ["nobody@nowhere.test"], "split", ["10.20.0.0/24 tcp/443"]))
    k = keyd_setup.start("keyd-1", extra='policy = "lockdown"')
    with _client(k, "visitor@guests.test") as c:
        c.connect()
        sa = store.get(ChildSaRecord, c.children()[0].child.spi_out)
        assert sa is not None
        assert (sa.record.policy, sa.record.policy_mode, sa.record.policy_allowed) == (
            "lockdown", "split", ["10.20.0.0/24 tcp/443"])
        c.delete()
