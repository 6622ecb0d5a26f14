"""The lab in the VM with kernel-dataplane nodes and a strongSwan client whose charon keeps
its Child SAs in the kernel (kernel-netlink): the client pings through a node's XFRM; a drain
moves it with the old owner's exact counters, a SIGKILL of its node with checkpoint + jump;
in both the client's SPIs stay, the sequence numbers it receives continue (exactly after the
drain, J beyond after the kill), and its kernel counts no replay or integrity failure.

A lab under TCG takes minutes to start (every daemon imports for about a minute), so this
runs only when IPSEC_CLUSTER_KERNEL_LAB=1 is set (the kernel tier's runner passes it into
the VM); otherwise it is skipped with that reason.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.cli.ops import rebalance, set_node_state
from cluster.cli.view import read_snapshot
from cluster.lab import vm
from cluster.lab.lab import Lab
from cluster.node.config import jump_for
from cluster.store import Assignment, Keyspace, Store
from cluster.store.seal import load_data_key

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(not vm.kernel_lab_wanted(),
                       reason="the kernel-dataplane lab (minutes under TCG) runs with "
                              "IPSEC_CLUSTER_KERNEL_LAB=1"),
]

CLIENT = "alice"
#: the lab's logs when it fails or goes down: under /tmp of the VM unless the run gives a
#: directory the host can read (vm.run's rwdirs)
LOGS = Path(os.environ.get("IPSEC_CLUSTER_KERNEL_LAB_LOGS", "/tmp/kernel-lab-logs"))
JUMP = jump_for(1024)  # the lab's nodes: checkpoint_packets 1024 (cluster/lab/daemons.py)
FAILURES = ("XfrmInStateSeqError", "XfrmInStateProtoError", "XfrmInNoStates",
            "XfrmInStateInvalid", "XfrmInTmplMismatch")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    the_lab = Lab.up(f"kdp{os.getpid() % 1000}", nodes=2, node_dataplane="kernel",
                     save_logs_to=LOGS)
    try:
        yield the_lab
    finally:
        the_lab.down(save_logs_to=LOGS)


def _store(lab: Lab) -> Store:
    key = load_data_key(lab.pki.data_key_file, environ={})
    return Store([lab.etcd_endpoint], Keyspace(lab.name), key, timeout_s=30.0)


def _client_states(lab: Lab) -> dict[int, tuple[int, int, int, int]]:
    """The client's XFRM states: spi -> (highest received, last sent, replay drops,
    integrity failures), from `ip -s xfrm state`."""
    out = lab.run(CLIENT, ["ip", "-s", "xfrm", "state"], check=True).stdout
    states = {}
    for block in re.split(r"(?m)^src ", out)[1:]:
        spi = int(re.search(r"spi (0x[0-9a-f]+)", block).group(1), 16)  # type: ignore[union-attr]
        # the replay state's counters (not the `seq` of the state's header line)
        seq = re.search(r"anti-replay.*?[ ,]seq (0x[0-9a-f]+)", block, re.S)
        oseq = re.search(r"anti-replay.*?oseq (0x[0-9a-f]+)", block, re.S)
        stats = re.search(r"replay (\d+) failed (\d+)", block)
        states[spi] = (int(seq.group(1), 16) if seq else 0, int(oseq.group(1), 16) if oseq else 0,
                       int(stats.group(1)) if stats else 0, int(stats.group(2)) if stats else 0)
    return states


def _xfrm_stat(lab: Lab) -> dict[str, int]:
    out = lab.run(CLIENT, ["cat", "/proc/net/xfrm_stat"], check=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


def _owner(store: Store) -> tuple[str, str]:
    (a,) = [v.record for v in store.list(Assignment).items]
    return a.node, a.phase


def _moved(store: Store, away_from: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        node, phase = _owner(store)
        if node != away_from and phase == "active":
            return node
        assert time.monotonic() < deadline, f"still owned by {node} ({phase})"
        time.sleep(1.0)


def _received(lab: Lab, spi_in: int) -> int:
    """The highest sequence number the client received on the cluster's SA to it."""
    return _client_states(lab)[spi_in][0]


def test_kernel_client_through_kernel_nodes_drain_exact_kill_jump(lab: Lab) -> None:
    lab.add_client(CLIENT, kernel_ipsec=True)
    assert lab.ping(CLIENT, count=3, settle_s=120), "no ping through the kernel-dataplane node"
    store = _store(lab)
    try:
        first, _ = _owner(store)
        states = _client_states(lab)
        assert len(states) == 2, states  # one Child SA: in and out
        # the state the client receives on has the client as its destination: its seq moves
        spis = set(states)
        inbound = max(spis, key=lambda s: states[s][0])
        assert states[inbound][0] >= 3
        stat = _xfrm_stat(lab)

        # drain: the old owner's final record, installed exactly by the other node
        before = states[inbound][0]
        set_node_state(store, first, "draining")
        rebalance(store, read_snapshot(store), False)
        _moved(store, first, 120)
        assert lab.ping(CLIENT, count=3, settle_s=60), "no ping after the drain"
        after = _received(lab, inbound)
        assert 3 <= after - before < 1000, (before, after)  # continued, not jumped
        assert set(_client_states(lab)) == spis

        # SIGKILL of the owner: the other node (undrained) takes over with checkpoint + jump
        set_node_state(store, first, "ready")
        victim, _ = _owner(store)
        lab.kill(victim, signal.SIGKILL)
        _moved(store, victim, 240)
        assert lab.ping(CLIENT, count=3, settle_s=120), "no ping after the SIGKILL"
        jumped = _received(lab, inbound)
        assert jumped >= after + JUMP, (after, jumped)
        final_states = _client_states(lab)
        assert set(final_states) == spis  # no rekey, no new SA
        assert all(s[2] == 0 and s[3] == 0 for s in final_states.values()), final_states
        now = _xfrm_stat(lab)
        assert {k: now[k] - stat[k] for k in FAILURES} == dict.fromkeys(FAILURES, 0)
    finally:
        store.close()
