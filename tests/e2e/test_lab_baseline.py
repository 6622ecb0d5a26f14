"""The lab's client harness against the baseline gateway: a strongSwan charon responder at the
VIP in keyd's place. Real charon with kernel-libipsec on both ends, real namespaces."""

from __future__ import annotations

import ipaddress
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from cluster.lab import addresses as A
from cluster.lab import lab as labmod
from cluster.lab import teardown
from cluster.lab.lab import Lab
from cluster.procs import spawn

BASELINE = pytest.mark.lab(gateway="strongswan", nodes=0)
POOL = ipaddress.ip_network(A.POOL)


def the_sa(lab: Lab, client: str) -> labmod.strongswan.IkeSaView:
    sas = lab.client_sas(client)
    assert len(sas) == 1, sas
    sa = sas[0]
    assert sa.state == "ESTABLISHED"
    assert sa.remote.startswith(f"{A.VIP}["), sa.remote   # stayed on the VIP (no MOBIKE move)
    assert sa.virtual_ip is not None and ipaddress.ip_address(sa.virtual_ip) in POOL
    assert len(sa.child_spis) == 1
    return sa


@BASELINE
def test_psk_client_reaches_the_server_only_through_its_tunnel(lab: Lab) -> None:
    lab.add_client("alice")
    lab.add_client("bare", ike=False)
    sa = the_sa(lab, "alice")
    assert lab.ping("alice", settle_s=15)
    # The router forwards nothing from the front network to the protected one: a client
    # without a tunnel gets no answer, so alice's answers came through her tunnel.
    assert not lab.ping("bare", count=1, settle_s=2)
    out = lab.run("alice", ["swanctl", "--list-sas"], check=True).stdout
    assert f"in  {sa.child_spis[0][0]}" in out and " 0 packets" not in out
    # the server runs iperf3 servers for throughput runs
    for port in labmod.IPERF_PORTS:
        assert lab.run("server", ["ss", "-Hltn", f"sport = :{port}"]).stdout.strip()
    assert lab.listening("keyd-1", 500)     # the baseline charon, in keyd-1's place


@BASELINE
def test_cert_and_nat_clients_with_other_proposals(lab: Lab) -> None:
    bob = lab.add_client("bob", auth="cert", ike_proposal="aes256-sha384-ecp384",
                         esp_proposal="aes256-sha256")
    carol = lab.add_client("carol", behind_nat=True,
                           ike_proposal="chacha20poly1305-prfsha256-x25519",
                           esp_proposal="chacha20poly1305")
    assert carol.address.startswith("198.51.100.")
    b, c = the_sa(lab, "bob"), the_sa(lab, "carol")
    assert b.virtual_ip != c.virtual_ip
    assert c.local.startswith(f"{carol.address}["), c.local
    assert lab.ping("bob", settle_s=15) and lab.ping("carol", settle_s=15)
    # the gateway saw carol from the NAT's outside address, not her own
    gw_sas = labmod.netns.run(labmod.strongswan.in_charon(
        lab.state.processes["gateway"].pid, ["swanctl", "--list-sas"]), check=True).stdout
    assert f"{A.NAT_OUTSIDE}[" in gw_sas and carol.address not in gw_sas
    assert bob.identity in gw_sas


@BASELINE
def test_kill_and_start_a_client(lab: Lab) -> None:
    lab.add_client("dave")
    first = the_sa(lab, "dave")
    old_pid = lab.kill("dave", signal.SIGKILL)
    assert not lab.state.processes["client:dave"].alive()
    new_pid = lab.start("dave")
    assert new_pid != old_pid
    second = the_sa(lab, "dave")
    assert second.spi_i != first.spi_i
    assert lab.ping("dave", settle_s=15)
    ns, pid = lab.state.clients["dave"].netns, lab.client_pid("dave")
    lab.remove_client("dave")
    assert not Path(f"/run/netns/{ns}").exists() and not teardown.running(pid)
    assert "dave" not in lab.status()["clients"]
    lab.add_client("dave")       # the name is free again
    assert lab.ping("dave", settle_s=15)


def _leftovers(prefix: str, pids: list[int]) -> list[str]:
    found = [f"namespace {p.name}" for p in Path("/run/netns").glob(f"{prefix}*")]
    found += [f"mount {ln.split()[1]}" for ln in Path("/proc/mounts").read_text().splitlines()
              if prefix in ln]
    found += [f"pid {pid}" for pid in pids if teardown.running(pid)]
    return found


def test_down_leaves_nothing_behind(make_lab) -> None:  # type: ignore[no-untyped-def]
    lab = make_lab(gateway="strongswan", nodes=0)
    lab.add_client("erin")
    lab.add_client("frank", behind_nat=True, auth="cert")
    # something the lab did not start itself, running in one of its namespaces
    stray = spawn(labmod.netns.exec_argv(lab.ns("server"), ["sleep", "600"]),
                  lab.dir / "stray.log")
    pids = [p.pid for p in lab.state.processes.values()] + [stray.pid]
    for ns in lab.state.namespaces:
        pids += labmod.netns.pids(ns)
    assert len(lab.state.namespaces) >= 7
    labmod.down(lab.name)
    stray.wait(timeout=5)
    assert _leftovers(lab.state.prefix, pids) == []
    assert not lab.dir.exists()


def test_down_after_a_crash_that_lost_the_state(make_lab) -> None:  # type: ignore[no-untyped-def]
    lab = make_lab(gateway="strongswan", nodes=0, clients=1)
    pids = [p.pid for p in lab.state.processes.values()]
    (lab.dir / "state.json").unlink()
    assert labmod.down(lab.name) is True
    assert _leftovers(lab.state.prefix, pids) == []
    assert not lab.dir.exists()


def clusterctl(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).parent / "clusterctl"), "lab", *args],
                          capture_output=True, text=True, timeout=timeout_s)


def test_cli_contract(lab_name: str) -> None:
    name = lab_name
    r = clusterctl("up", "--name", name, "--gateway", "strongswan", "--nodes", "0",
                   "--clients", "1")
    assert r.returncode == 0, r.stderr
    st = json.loads(clusterctl("status", "--name", name, "-o", "json").stdout)
    for key in ("vip", "gateway_id", "psk_file", "psk_fingerprint", "ca_cert",
                "protected_network", "server_ip",
                "front_network", "etcd_endpoints", "nodes", "keyd", "clients"):
        assert key in st, key
    assert st["vip"] == A.VIP and st["server_ip"] == A.SERVER_IP
    assert "psk" not in st, "the lab's PSK itself is printed"
    assert Path(st["psk_file"]).read_bytes()
    assert Path(st["ca_cert"]).read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert st["clients"][0]["name"] == "client-1" and st["clients"][0]["alive"]
    assert st["keyd"][0]["namespace"].startswith("ipsc-") and st["keyd"][0]["pid"]
    # etcd is reachable from the root namespace, over loopback only
    endpoint = st["etcd_endpoints"][0]
    assert endpoint.startswith("http://127.0.0.1:")
    assert requests.get(f"{endpoint}/version", timeout=5).ok

    r = clusterctl("add-client", "gina", "--name", name, "--auth", "cert")
    assert r.returncode == 0 and "virtual IP 10.99.0." in r.stdout, r.stderr
    r = clusterctl("exec", "gina", "--name", name, "--", "swanctl", "--list-sas")
    assert r.returncode == 0 and "ESTABLISHED" in r.stdout
    r = clusterctl("exec", "gina", "--name", name, "--", "sh", "-c", "exit 7")
    assert r.returncode == 7
    r = clusterctl("kill", "gina", "--name", name, "--signal", "KILL")
    assert r.returncode == 0, r.stderr
    r = clusterctl("start", "gina", "--name", name)
    assert r.returncode == 0, r.stderr
    assert clusterctl("status", "--name", name).returncode == 0   # the table

    # operational errors: one line on stderr, exit 1, no traceback
    for args in (("exec", "nobody", "--name", name, "--", "true"),
                 ("kill", "node-9", "--name", name),
                 ("add-client", "gina", "--name", name),
                 ("status", "--name", "no-such-lab"),
                 ("up", "--name", name)):
        r = clusterctl(*args)
        assert r.returncode == 1, (args, r.stderr)
        assert r.stderr.startswith("error: ") and len(r.stderr.splitlines()) == 1, r.stderr
    # usage errors: exit 2
    for args in (("up", "--nodes", "x"), ("kill", "gina", "--signal", "NOPE"),
                 ("add-client", "x", "--auth", "nope"), ("up", "--name", "Bad_Name")):
        r = clusterctl(*args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (args, r.stderr)
    r = clusterctl("down", "--name", name)
    assert r.returncode == 0
    assert clusterctl("status", "--name", name).returncode == 1
