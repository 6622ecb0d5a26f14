"""The node data plane's acceptance scenarios with real strongSwan clients (issue 4, "Done
when"): client ↔ keyd ↔ etcd ↔ node ↔ server.

One lab for the module: 2 nodes, one keyd, the sprayer, two strongSwan clients (one behind the
NAT). In order: ping and a 5-second iperf3 TCP stream through the tunnel; the owner changes by a
new assignment and the client's ping goes on with the same SPIs; a node killed with SIGKILL and
started again holds every SA again; etcd stopped for 30 s while ping runs through the node.
Numbers are printed; times are asserted only as generous sanity bounds (bench/ measures).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster.lab import addresses as A
from cluster.lab import lab as labmod
from cluster.lab.clients import CLIENT_DOMAIN
from cluster.lab.lab import IPERF_PORTS, Lab
from cluster.lab.strongswan import IkeSaView

CLIENTS = {"nina": False, "otto": True}   # name → behind the NAT
CLUSTERCTL = str(Path(sys.executable).parent / "clusterctl")
ETCD_OUTAGE_S = 30


def _sa(lab: Lab, client: str) -> IkeSaView:
    sas = [sa for sa in lab.client_sas(client) if sa.state == "ESTABLISHED"]
    assert len(sas) == 1, f"{client} holds {len(sas)} established IKE SAs"
    return sas[0]


def _identity(sa: IkeSaView) -> tuple[object, ...]:
    return (sa.uniqueid, sa.spi_i, sa.spi_r, sa.child_spis)


def _ctl(lab: Lab, *args: str) -> Any:
    r = subprocess.run([CLUSTERCTL, "--lab", lab.name, "-o", "json", *args],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"clusterctl {' '.join(args)}: {r.stderr.strip()}"
    return json.loads(r.stdout) if r.stdout.strip() else None


def _owners(lab: Lab) -> dict[str, dict[str, Any]]:
    by_identity = {f"{c}.{CLIENT_DOMAIN}": c for c in CLIENTS}
    return {by_identity[r["identity"]]: r for r in _ctl(lab, "client", "list")
            if r["identity"] in by_identity}


def _metric(lab: Lab, node: str, name: str) -> float | None:
    """`ipsec_cluster_node_<name>` (with its labels, e.g. `bytes_total{direction="in"}`) from
    node's Prometheus endpoint; None while the endpoint does not answer."""
    r = lab.run(node, ["curl", "-sf", "--max-time", "2", "http://127.0.0.1:9411/metrics"],
                timeout_s=10)
    if r.returncode != 0:
        return None
    m = re.search(rf"^ipsec_cluster_node_{re.escape(name)} (\S+)$", r.stdout, re.M)
    return float(m.group(1)) if m else None


def _settled(lab: Lab, timeout_s: float = 60.0) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        rows = _owners(lab)
        if len(rows) == len(CLIENTS) and all(
                r["phase"] == "active" and r["owner_alive"] for r in rows.values()):
            return rows
        assert time.monotonic() < deadline, f"the clients' assignments did not settle: {rows}"
        time.sleep(0.5)


def _ping_stats(out: str) -> tuple[int, int]:
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    return int(m.group(1)), int(m.group(2))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces)")
    for tool in ("ip", "nft", "etcd", "swanctl", "iperf3", "nsenter", "unshare", "curl"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: run `make bootstrap`")
    name = f"dp-{secrets.token_hex(3)}"
    logs = tmp_path_factory.mktemp("dataplane") / "lab-logs"
    try:
        lab = Lab.up(name, nodes=2, keyd=1, save_logs_to=logs)
        for client, nat in CLIENTS.items():
            lab.add_client(client, behind_nat=nat)
        for client in CLIENTS:
            assert lab.ping(client, settle_s=20), f"{client} cannot reach the server"
        _settled(lab)
        yield lab
    finally:
        labmod.down(name, logs)
        print(f"\nlab logs: {logs}")


def test_ping_and_iperf3_through_the_tunnel(lab: Lab) -> None:
    for client in CLIENTS:
        r = lab.run(client, ["ping", "-c", "20", "-i", "0.05", "-W", "2", A.SERVER_IP])
        sent, got = _ping_stats(r.stdout)
        assert got == sent == 20, r.stdout
    inbound = 'bytes_total{direction="in"}'
    carried = sum(_metric(lab, n, inbound) or 0 for n in ("node-1", "node-2"))
    r = lab.run("nina", ["iperf3", "-c", A.SERVER_IP, "-p", str(IPERF_PORTS[0]), "-t", "5",
                         "-J"], timeout_s=60)
    carried = sum(_metric(lab, n, inbound) or 0 for n in ("node-1", "node-2")) - carried
    result = json.loads(r.stdout)
    assert r.returncode == 0 and "error" not in result, r.stdout[-500:]
    received = result["end"]["sum_received"]
    print(f"\niperf3 TCP through the tunnel, 5 s: {received['bytes'] / 1e6:.1f} MB received, "
          f"{received['bits_per_second'] / 1e6:.1f} Mbit/s, "
          f"{result['end']['sum_sent'].get('retransmits', 0)} retransmits; the nodes decrypted "
          f"{carried / 1e6:.1f} MB of inner packets meanwhile")
    assert received["seconds"] >= 4.5 and received["bytes"] > 0
    assert carried >= received["bytes"], "the stream did not go through the nodes"


def test_ownership_moves_by_a_new_assignment(lab: Lab) -> None:
    before = _settled(lab)
    sa_before = _sa(lab, "nina")
    old = before["nina"]["owner"]
    new = next(n for n in ("node-1", "node-2") if n != old)
    epoch = before["nina"]["epoch"]
    ping = subprocess.Popen(lab.exec_argv("nina", ["ping", "-c", "100", "-i", "0.05", "-W", "2",
                                                   A.SERVER_IP]),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(1.0)
        # the sprayer writes the new assignment (epoch + 1) once the owner is drained
        _ctl(lab, "node", "drain", old)
        rows = _settled(lab)
        out, _ = ping.communicate(timeout=60)
    finally:
        if ping.poll() is None:
            ping.kill()
        _ctl(lab, "node", "undrain", old)
    sent, got = _ping_stats(out)
    print(f"\nnina: {old} -> {rows['nina']['owner']} (epoch {epoch} -> {rows['nina']['epoch']}): "
          f"{got} of {sent} pings answered across the move")
    assert rows["nina"]["owner"] == new and rows["nina"]["epoch"] > epoch
    assert sent - got <= 3, out
    assert _identity(_sa(lab, "nina")) == _identity(sa_before)
    assert lab.ping("nina", count=5)


def test_node_killed_and_restarted_has_every_sa_back(lab: Lab) -> None:
    rows = _settled(lab)
    child_sas = sum(len(r["child_sas"]) for r in rows.values())
    sas_before = {c: _identity(_sa(lab, c)) for c in CLIENTS}
    victim = rows["nina"]["owner"]
    lab.kill(victim, signal.SIGKILL)
    started = time.monotonic()
    lab.start(victim)
    while (_metric(lab, victim, "sas_installed") or 0) < child_sas:
        assert time.monotonic() - started < 30, f"{victim} did not load the SAs again"
        time.sleep(0.05)
    took = time.monotonic() - started
    print(f"\n{victim} SIGKILLed and started again: all {child_sas} Child SAs installed "
          f"{took * 1000:.0f} ms after the start (goal 5 s)")
    assert took < 15     # sanity bound; the 5 s goal is measured, not asserted
    _settled(lab)
    for c in CLIENTS:
        assert lab.ping(c, settle_s=15), f"{c} lost its path"
        assert _identity(_sa(lab, c)) == sas_before[c]


def test_etcd_stopped_for_30s_loses_no_ping(lab: Lab) -> None:
    _settled(lab)
    count = int((ETCD_OUTAGE_S + 6) / 0.1)
    pings = {c: subprocess.Popen(lab.exec_argv(c, ["ping", "-c", str(count), "-i", "0.1", "-W",
                                                   "2", A.SERVER_IP]),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for c in CLIENTS}
    try:
        time.sleep(2.0)
        lab.kill("etcd", signal.SIGKILL)
        stopped = time.monotonic()
        time.sleep(ETCD_OUTAGE_S)
        lab.start("etcd")
        outage = time.monotonic() - stopped
        results = {c: _ping_stats(p.communicate(timeout=60)[0]) for c, p in pings.items()}
    finally:
        for p in pings.values():
            if p.poll() is None:
                p.kill()
    print(f"\netcd down for {outage:.1f} s: " + ", ".join(
        f"{c} {got}/{sent} answered" for c, (sent, got) in results.items()))
    for c, (sent, got) in results.items():
        assert sent == count and got == sent, f"{c}: {sent - got} pings lost"
    _settled(lab)
