"""Inner IPv6 through the cluster (issue 11, build item 5): a real strongSwan client that asks
for both families (`vips = 0.0.0.0,::`, `remote_ts = 0.0.0.0/0,::/0`, as Android's native
client and dual-stack strongSwan clients do) gets an IPv4 and an IPv6 virtual address from
keyd's pools, pings the protected server over both, and keeps both — and its SAs — when its
node is killed and another takes over. A client that asks for IPv4 only is served as before.

The lab's inner IPv6 is unique local (fd00:20::/64 protected, fd00:30::/64 back end,
fd00:99::/112 pool); the outer traffic (IKE, ESP in UDP) stays IPv4.
"""

from __future__ import annotations

import ipaddress
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from test_failover import sa_identity
from test_keyd import ike_id, lab_store, only_sa

from cluster.lab import addresses as A
from cluster.lab import demo
from cluster.lab.lab import Lab
from cluster.store.records import ChildSaRecord, IkeSaRecord, PoolLease

PING_INTERVAL = "0.05"
CLUSTERCTL = str(Path(sys.executable).parent / "clusterctl")


def _answered_after(log: Path, t: float) -> bool:
    return any(ts > t for ts, _ in demo.replies(log))


def _wait_answers(logs: dict[str, Path], after: float, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while silent := [k for k, log in logs.items() if not _answered_after(log, after)]:
        assert time.monotonic() < deadline, f"no ping answered since {after}: {silent}"
        time.sleep(0.1)


@pytest.mark.lab(nodes=2, keyd=1)
def test_dual_stack_client_pings_over_both_families_and_keeps_them_over_a_failover(
        lab: Lab) -> None:
    lab.add_client("dual", ipv6=True)
    lab.add_client("v4only")
    sa = only_sa(lab, "dual")
    assert sa.virtual_ip is not None and \
        ipaddress.ip_address(sa.virtual_ip) in ipaddress.ip_network(A.POOL), sa
    assert sa.virtual_ip6 is not None and \
        ipaddress.ip_address(sa.virtual_ip6) in ipaddress.ip_network(A.POOL6), sa
    old = only_sa(lab, "v4only")
    assert old.virtual_ip is not None and old.virtual_ip6 is None, old

    with lab_store(lab) as store:
        ike = store.get(IkeSaRecord, ike_id(sa))
        assert ike is not None
        assert (ike.record.virtual_ip, ike.record.virtual_ip6) == (sa.virtual_ip,
                                                                   sa.virtual_ip6)
        ((_, spi_out_hex),) = sa.child_spis
        child = store.get(ChildSaRecord, int(spi_out_hex, 16))
        assert child is not None and child.record.virtual_ip6 == sa.virtual_ip6
        assert sorted(child.record.ts_remote) == sorted(
            [f"{sa.virtual_ip}/32", f"{sa.virtual_ip6}/128"])
        assert sorted(child.record.ts_local) == sorted([A.PROTECTED_NETWORK,
                                                        A.PROTECTED_NETWORK6])
        for ip in (sa.virtual_ip, sa.virtual_ip6):
            lease = store.get(PoolLease, ip)
            assert lease is not None and lease.record.ike_sa_id == ike_id(sa)
        v4_child = store.get(ChildSaRecord, int(old.child_spis[0][1], 16))
        assert v4_child is not None and v4_child.record.virtual_ip6 is None

    assert lab.ping("dual") and lab.ping("v4only")
    r = lab.run("dual", ["ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", A.SERVER_IP6])
    assert r.returncode == 0, r.stdout + r.stderr
    # the IPv4-only client has no IPv6 way to the protected network
    r = lab.run("v4only", ["ping", "-6", "-c", "1", "-W", "1", A.SERVER_IP6])
    assert r.returncode != 0

    logs = {}
    for family, target in (("4", A.SERVER_IP), ("6", A.SERVER_IP6)):
        rec = lab.spawn_in("dual", f"ping{family}:dual", [
            "ping", f"-{family}", "-D", "-n", "-i", PING_INTERVAL, "-W", "1", target])
        logs[family] = Path(rec.log)
    _wait_answers(logs, 0.0)

    owner = (lab.etcd_json(f"assign/{ike_id(sa)}") or {}).get("node")
    assert owner in ("node-1", "node-2"), owner
    killed_at = time.time()
    lab.kill(owner, signal.SIGKILL)
    # both families come back through the other node, on the same SAs
    _wait_answers(logs, killed_at + 0.5)
    deadline = time.monotonic() + 30
    while (lab.etcd_json(f"assign/{ike_id(sa)}") or {}).get("node") == owner:
        assert time.monotonic() < deadline, "the client was not taken over"
        time.sleep(0.3)
    now = only_sa(lab, "dual")
    assert sa_identity(now) == sa_identity(sa), f"new IKE SA or rekey: {sa} -> {now}"
    assert (now.virtual_ip, now.virtual_ip6) == (sa.virtual_ip, sa.virtual_ip6)
    for family, log in logs.items():
        gap, lost = demo.gap_after(demo.replies(log), killed_at, time.time())
        print(f"IPv{family}: longest gap {gap * 1000:.0f} ms, {lost} lost pings")
        assert gap < 10.0, f"IPv{family} pings stopped for {gap:.1f} s"   # sanity, not a goal
    lab.start(owner)
    deadline = time.monotonic() + 30
    while (lab.etcd_json(f"nodes/{owner}") or {}).get("state") != "ready":
        assert time.monotonic() < deadline, f"{owner} did not register again"
        time.sleep(0.3)

    # a planned hand-off: drain the client's owner (the killed node may have it back by
    # now); the old owner forwards what still reaches it, IPv6 included, to the new owner's
    # IPv6 back-end address
    time.sleep(2)
    second = (lab.etcd_json(f"assign/{ike_id(sa)}") or {}).get("node")
    assert second in ("node-1", "node-2"), second
    target = "node-2" if second == "node-1" else "node-1"
    assert _ctl(lab, "node", "drain", second)["state"] == "draining"
    drained_at = time.time()
    _ctl(lab, "rebalance")
    deadline = time.monotonic() + 60
    while (a := lab.etcd_json(f"assign/{ike_id(sa)}") or {}).get("node") != target or \
            a.get("phase") != "active":
        assert time.monotonic() < deadline, f"not handed off to {target}: {a}"
        time.sleep(0.2)
    _wait_answers(logs, time.time())
    assert sa_identity(only_sa(lab, "dual")) == sa_identity(sa)
    for family, log in logs.items():
        gap, lost = demo.gap_after(demo.replies(log), drained_at, time.time())
        print(f"IPv{family} over the drain: longest gap {gap * 1000:.0f} ms, {lost} lost")
        assert gap < 10.0, f"IPv{family} pings stopped for {gap:.1f} s"
    # the old owner's forwarding route for the IPv6 address went via the IPv6 back end
    text = (lab.dir / "logs" / f"{second}.log").read_text(errors="replace")
    assert "address families differ" not in text, text[-2000:]


def _ctl(lab: Lab, *args: str) -> Any:
    r = subprocess.run([CLUSTERCTL, "--lab", lab.name, "-o", "json", *args],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"clusterctl {' '.join(args)}: {r.stderr.strip()}"
    return json.loads(r.stdout) if r.stdout.strip() else None
