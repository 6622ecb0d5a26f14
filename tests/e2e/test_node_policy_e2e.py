"""Issue 11, "Done when": a guest-policy client's packets to a forbidden destination are
dropped at the node and counted; its allowed traffic flows. A real strongSwan client in the
lab, keyd binding it to policy/guest by its identity, one node enforcing it; an operator's
`clusterctl policy set` then opens more without the client reconnecting."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster.lab import addresses as A
from cluster.lab import lab as labmod
from cluster.lab.lab import IPERF_PORTS, Lab

CLUSTERCTL = str(Path(sys.executable).parent / "clusterctl")
GUEST = "gina"
PORT = IPERF_PORTS[0]  # iperf3 listens there on the server: a TCP connect shows the path


def _ctl(lab: Lab, *args: str) -> Any:
    r = subprocess.run([CLUSTERCTL, "--lab", lab.name, "-o", "json", *args],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"clusterctl {' '.join(args)}: {r.stderr.strip()}"
    return json.loads(r.stdout) if r.stdout.strip() else None


def _policy_drops(lab: Lab) -> float:
    total = 0.0
    for node in ("node-1",):
        r = lab.run(node, ["curl", "-sf", "--max-time", "2", "http://127.0.0.1:9411/metrics"],
                    timeout_s=10)
        for m in re.finditer(r'^ipsec_cluster_node_policy_drops_total\{([^}]*)\} (\S+)$',
                             r.stdout, re.M):
            labels = m.group(1)
            if 'policy="guest"' in labels and 'direction="in"' in labels:
                total += float(m.group(2))
    return total


def _tcp_connects(lab: Lab) -> bool:
    r = lab.run(GUEST, [sys.executable, "-c",
                        "import socket,sys; socket.create_connection("
                        f"('{A.SERVER_IP}', {PORT}), timeout=3).close()"], timeout_s=20)
    return r.returncode == 0


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces)")
    for tool in ("ip", "nft", "etcd", "swanctl", "nsenter", "unshare", "curl"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: run `make bootstrap`")
    name = f"pol-{secrets.token_hex(3)}"
    logs = tmp_path_factory.mktemp("policy") / "lab-logs"
    try:
        lab = Lab.up(name, nodes=1, keyd=1, save_logs_to=logs)
        yield lab
    finally:
        labmod.down(name, logs)
        print(f"\nlab logs: {logs}")


def test_guest_policy_drops_forbidden_and_counts_allowed_flows(lab: Lab) -> None:
    # the protected server is internal (10.20.0.10): a guest reaches it for ICMP only
    _ctl(lab, "policy", "set", "guest", "--mode", "guest", "--allow", f"{A.SERVER_IP}/32 icmp",
         "--identity", f"{GUEST}.*")
    lab.add_client(GUEST)
    assert lab.ping(GUEST, settle_s=20), "the guest cannot ping the server (allowed)"
    sas = _ctl(lab, "sa", "list")
    assert sas and all(r["policy"] == "guest" for r in sas), sas  # keyd bound it by identity
    before = _policy_drops(lab)
    assert not _tcp_connects(lab), "a TCP connection the guest policy forbids went through"
    assert _policy_drops(lab) > before, "the forbidden packets were not counted at the node"
    assert lab.ping(GUEST), "allowed traffic stopped flowing"
    # the operator opens the port: the established SA follows policy/guest, no rekey
    spis = sorted(r["spi_in"] for r in _ctl(lab, "sa", "list"))
    _ctl(lab, "policy", "set", "guest", "--mode", "guest", "--allow", f"{A.SERVER_IP}/32 icmp",
         "--allow", f"{A.SERVER_IP}/32 tcp/{PORT}", "--identity", f"{GUEST}.*")
    assert any(_tcp_connects(lab) for _ in range(5)), "the opened port stayed closed"
    assert sorted(r["spi_in"] for r in _ctl(lab, "sa", "list")) == spis
    shown = _ctl(lab, "policy", "show", "guest")
    assert shown["bound_sas"] >= 1


def _drops(lab: Lab, policy: str, reason: str) -> float:
    r = lab.run("node-1", ["curl", "-sf", "--max-time", "2", "http://127.0.0.1:9411/metrics"],
                timeout_s=10)
    return sum(float(m.group(2)) for m in re.finditer(
        r'^ipsec_cluster_node_policy_drops_total\{([^}]*)\} (\S+)$', r.stdout, re.M)
        if f'policy="{policy}"' in m.group(1) and f'reason="{reason}"' in m.group(1))


def _ping6(lab: Lab, client: str, count: int = 2) -> bool:
    r = lab.run(client, ["ping", "-6", "-c", str(count), "-i", "0.2", "-W", "2", A.SERVER_IP6])
    return r.returncode == 0


def test_guest_policy_with_ipv4_rules_only_lets_no_ipv6_through(lab: Lab) -> None:
    """A dual-stack guest whose policy names only IPv4: its IPv6 is dropped at the node and
    counted (`no_ipv6`), its IPv4 flows; an IPv6 rule opens what it names."""
    _ctl(lab, "policy", "set", "guest6", "--mode", "guest", "--allow",
         f"{A.SERVER_IP}/32 icmp", "--identity", "gwen.*")
    lab.add_client("gwen", ipv6=True)
    assert lab.ping("gwen", settle_s=20), "the guest cannot ping the server over IPv4"
    before = _drops(lab, "guest6", "no_ipv6")
    assert not _ping6(lab, "gwen"), "IPv6 went through a guest policy without IPv6 rules"
    assert _drops(lab, "guest6", "no_ipv6") > before, "the IPv6 drops were not counted"
    assert lab.ping("gwen"), "IPv4 stopped flowing"
    _ctl(lab, "policy", "set", "guest6", "--mode", "guest", "--allow",
         f"{A.SERVER_IP}/32 icmp", "--allow", f"{A.SERVER_IP6}/128 icmpv6",
         "--identity", "gwen.*")
    assert any(_ping6(lab, "gwen") for _ in range(5)), "the IPv6 rule did not open the server"
