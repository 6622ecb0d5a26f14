"""keyd is not a single point of failure: two keyd instances behind the sprayer, one killed.

A lab with two keyd instances and one node; a strongSwan client (alice) establishes and pings
the protected server every 20 ms for the whole test. The keyd instance that served her (the
`keyd_id` of her IKE SA in etcd) is killed with SIGKILL; the sprayer takes it out of the IKE
steering (its port is refused, long before its lease would run out); alice's next
`swanctl --rekey --child` and `--rekey --ike` succeed on her IKE SA through the other
instance; a new client (bob) establishes while the killed instance is down; alice's pings
go on throughout. The killed instance, started again, registers and is steered to again.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_keyd import ike_id, lab_store, only_sa
from test_keyd import wait_until as _wait_until

from cluster.lab import addresses as A
from cluster.lab import demo, strongswan
from cluster.lab.lab import Lab
from cluster.store.records import ChildSaRecord, IkeSaRecord, KeydRecord
from sprayer.backends import MarkAllocator, keyd_backends

PING_INTERVAL = "0.02"
KEYD_LEASE_TTL_S = 5.0     # keyd/registration.py LEASE_TTL_S


def wait_until(pred: Callable[[], Any], timeout_s: float, what: str = "") -> Any:
    """test_keyd's, polling faster: the steering change is timed here."""
    return _wait_until(pred, timeout_s, what, step_s=0.05)


def keyd_marks() -> dict[str, int]:
    """keyd-i → its packet mark, derived as the sprayer derives it (keyd back ends first)."""
    marks = MarkAllocator()
    return {f"keyd-{i}": marks.mark(b.name) for i, b in
            enumerate(keyd_backends([A.keyd_ip(1), A.keyd_ip(2)]), start=1)}


def ike_steered_to(lab: Lab) -> set[str]:
    """The keyd instances the sprayer's IKE rule (UDP 500) sends to, read from the kernel."""
    chain = lab.run("router", ["nft", "list", "chain", "inet", "ipsec_cluster", "prerouting"],
                    check=True).stdout
    ike = next(line for line in chain.splitlines() if "udp dport 500" in line)
    return {k for k, m in keyd_marks().items() if f"{m:#x}" in ike}


@pytest.mark.lab(nodes=1, keyd=2)
def test_keyd_killed_rekeys_and_new_clients_go_to_the_other(lab: Lab) -> None:
    wait_until(lambda: ike_steered_to(lab) == {"keyd-1", "keyd-2"}, 30,
               "IKE hashed over both keyd instances")
    lab.add_client("alice")
    alice = only_sa(lab, "alice")
    ping = lab.spawn_in("alice", "ping:alice", ["ping", "-D", "-n", "-i", PING_INTERVAL,
                                                "-W", "1", A.SERVER_IP])
    log = Path(ping.log)
    wait_until(lambda: demo.replies(log), 30, "alice's first ping answer")
    start = time.time()

    with lab_store(lab) as store:
        held = store.get(IkeSaRecord, ike_id(alice))
        assert held is not None
        served = held.record.keyd_id
        other = "keyd-2" if served == "keyd-1" else "keyd-1"
        print(f"\nalice's IKE SA {ike_id(alice)} was last written by {served}")

        # kill the instance that served her; the sprayer takes it out of the IKE rule
        killed_at = time.monotonic()
        lab.kill(served, signal.SIGKILL)
        wait_until(lambda: ike_steered_to(lab) == {other}, KEYD_LEASE_TTL_S + 5,
                   f"{served} out of the IKE steering")
        out_after = time.monotonic() - killed_at
        lease_left = store.get(KeydRecord, served) is not None
        print(f"{served} out of the IKE steering {out_after * 1000:.0f} ms after SIGKILL "
              f"(its keyd/ record {'still held' if lease_left else 'gone'} then)")

        # Child SA rekey on the same IKE SA, answered by the other instance
        pid = lab.client_pid("alice")
        ((_, old_out),) = alice.child_spis
        strongswan.swanctl(pid, "--rekey", "--child", "lab")
        rekeyed = wait_until(lambda: [s for s in lab.client_sas("alice") if s.child_spis
                                      and s.child_spis[0][1] != old_out], 40,
                             "alice's Child SA rekey")[0]
        assert (rekeyed.spi_i, rekeyed.spi_r) == (alice.spi_i, alice.spi_r)
        assert rekeyed.uniqueid == alice.uniqueid and rekeyed.state == "ESTABLISHED"
        ike = wait_until(lambda: (r := store.get(IkeSaRecord, ike_id(alice))) is not None
                         and r.record.child_spis == [int(rekeyed.child_spis[0][1], 16)]
                         and r, 20, "the Child rekey in etcd")
        assert ike.record.keyd_id == other

        # IKE SA rekey (CREATE_CHILD_SA on that IKE SA), again by the other instance
        strongswan.swanctl(pid, "--rekey", "--ike", "lab")
        renewed = wait_until(lambda: [s for s in lab.client_sas("alice")
                                      if s.state == "ESTABLISHED"
                                      and ike_id(s) != ike_id(alice)], 40,
                             "alice's IKE SA rekey")[0]
        assert renewed.virtual_ip == alice.virtual_ip
        # the Child SA moved over intact: a rekey, not a new authentication
        assert renewed.child_spis == rekeyed.child_spis
        assert len(lab.client_sas("alice")) == 1
        new_ike = wait_until(lambda: store.get(IkeSaRecord, ike_id(renewed)), 20,
                             "the rekeyed IKE SA in etcd")
        assert new_ike.record.keyd_id == other
        wait_until(lambda: store.get(IkeSaRecord, ike_id(alice)) is None, 20,
                   "the old IKE SA gone from etcd")
        child = store.get(ChildSaRecord, int(rekeyed.child_spis[0][1], 16))
        assert child is not None and child.record.ike_sa_id == ike_id(renewed)

        # a new client establishes while the killed instance is down
        assert not lab.state.processes[served].alive()
        lab.add_client("bob")
        bob = only_sa(lab, "bob")
        assert bob.virtual_ip is not None
        bob_rec = store.get(IkeSaRecord, ike_id(bob))
        assert bob_rec is not None and bob_rec.record.keyd_id == other
        assert lab.ping("bob", settle_s=10), "bob has no path to the protected server"

        # alice's pings went on throughout
        end = time.time()
        gap, lost = demo.gap_after(demo.replies(log), start, end)
        print(f"alice, from before the kill to bob's ping: longest gap {gap * 1000:.0f} ms, "
              f"{lost} lost pings of {(end - start) / float(PING_INTERVAL):.0f}")
        assert gap < 2.0 and lost <= 10, f"alice's data plane was disturbed: gap {gap:.2f} s, " \
                                         f"{lost} lost"
        assert only_sa(lab, "alice").child_spis == rekeyed.child_spis

    # the killed instance comes back, registers, and takes IKE again
    lab.start(served)
    wait_until(lambda: ike_steered_to(lab) == {"keyd-1", "keyd-2"}, 30,
               f"{served} back in the IKE steering")
