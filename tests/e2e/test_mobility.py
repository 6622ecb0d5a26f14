"""Clients that move (MOBIKE, RFC 4555) and clients sent elsewhere (redirect, RFC 5685), with
real strongSwan clients in the lab (issue 13, "Done when"; see `identity` for the Child SAs).

One lab for the module: 2 nodes, 2 keyd instances, the sprayer. A client pinging every 10 ms
moves to a second front-network address: it keeps its IKE and Child SAs, etcd holds the new
address, and after its node is killed the next owner sends there. Then keyd is killed right
after answering a move, and the next move is answered by the other instance. Last, keyd sends
new clients to a charon beside the cluster, and `clusterctl client redirect` sends an
established one there.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster.lab import addresses as A
from cluster.lab import demo
from cluster.lab import lab as labmod
from cluster.lab.clients import CLIENT_DOMAIN
from cluster.lab.lab import Lab
from cluster.lab.mobility import MOVE_ADDRESSES, OTHER_GATEWAY
from cluster.lab.strongswan import IkeSaView

CLUSTERCTL = str(Path(sys.executable).parent / "clusterctl")
PING_INTERVAL = "0.01"


def _require_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces)")
    for tool in ("ip", "nft", "etcd", "swanctl", "nsenter", "unshare", "curl"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: run `make bootstrap`")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    _require_tools()
    import secrets
    name = f"mob-{secrets.token_hex(3)}"
    logs = tmp_path_factory.mktemp("mobility") / "lab-logs"
    try:
        yield Lab.up(name, nodes=2, keyd=2, save_logs_to=logs)
    finally:
        labmod.down(name, logs)
        print(f"\nlab logs: {logs}")


def ctl(lab: Lab, *args: str) -> Any:
    r = subprocess.run([CLUSTERCTL, "--lab", lab.name, "-o", "json", *args],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"clusterctl {' '.join(args)}: {r.stderr.strip()}"
    return json.loads(r.stdout) if r.stdout.strip() else None


def row_of(lab: Lab, client: str) -> dict[str, Any]:
    identity = f"{client}.{CLIENT_DOMAIN}"
    rows = [r for r in ctl(lab, "client", "list") if r["identity"] == identity]
    assert len(rows) == 1, rows
    return rows[0]


def child_peers(lab: Lab, row: dict[str, Any]) -> set[str]:
    return {ctl(lab, "sa", "show", spi)["peer"] for spi in row["child_sas"]}


def one_sa(lab: Lab, client: str) -> IkeSaView:
    sas = [sa for sa in lab.client_sas(client) if sa.state == "ESTABLISHED"]
    assert len(sas) == 1, f"{client} holds {len(sas)} established IKE SAs"
    return sas[0]


def identity(sa: IkeSaView) -> tuple[object, ...]:
    """What a move must not change: the IKE SA (its unique id counts up on a new IKE_SA_INIT)
    and its SPIs. Not the Child SA SPIs here: the lab's clients run ESP in kernel-libipsec,
    whose update_sa is NOT_SUPPORTED, so strongSwan rekeys its Child SAs after each MOBIKE
    update (CREATE_CHILD_SA on the same IKE SA). keyd and the nodes keep Child SAs as they
    are across a move (tests/unit/ike/test_ike_mobike.py, tests/integration/node/
    test_node_mobike.py); a client with kernel IPsec keeps their SPIs too."""
    return (sa.uniqueid, sa.spi_i, sa.spi_r)


def wait(what: str, cond: Callable[[], bool], timeout_s: float = 20.0) -> float:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return time.time()


def start_ping(lab: Lab, client: str) -> Path:
    rec = lab.spawn_in(client, f"ping:{client}", [
        "ping", "-D", "-n", "-i", PING_INTERVAL, "-W", "1", A.SERVER_IP])
    log = Path(rec.log)
    wait("a first answer", lambda: bool(demo.replies(log)))
    return log


def answered_after(log: Path, t: float) -> bool:
    return any(ts > t for ts, _ in demo.replies(log))


def test_a_moving_client_keeps_its_sas_and_its_next_owner_follows(lab: Lab) -> None:
    lab.add_client("mo")
    before = one_sa(lab, "mo")
    log = start_ping(lab, "mo")
    row = row_of(lab, "mo")
    old = lab.state.clients["mo"].address
    new = MOVE_ADDRESSES[0]
    assert row["peer"] == f"{old}:4500"
    time.sleep(0.5)
    moved_at = time.time()
    lab.move_client("mo", new)
    # UPDATE_SA_ADDRESSES answered, return routability checked, both records rewritten
    wait("etcd to hold the new address", lambda: row_of(lab, "mo")["peer"] == f"{new}:4500"
         and child_peers(lab, row_of(lab, "mo")) == {f"{new}:4500"})
    wait("the ping to go on", lambda: answered_after(log, moved_at), 10)
    time.sleep(1.0)
    gap, lost = demo.gap_after(demo.replies(log), moved_at, time.time())
    print(f"\nmove {old} -> {new}: longest ping gap {gap * 1000:.0f} ms, {lost} lost")
    assert gap < 1.0, f"pings stopped for {gap:.2f} s after the move"
    after = one_sa(lab, "mo")
    assert identity(after) == identity(before)          # same IKE SA, same SPIs
    assert after.local.split("[")[0] == new
    # its node dies: the node that takes it over sends to the new address
    owner = row_of(lab, "mo")["owner"]
    killed_at = time.time()
    lab.kill(owner, signal.SIGKILL)
    wait("the ping to come back through another node",
         lambda: answered_after(log, killed_at + 0.05), 30)
    assert row_of(lab, "mo")["owner"] != owner
    assert identity(one_sa(lab, "mo")) == identity(before)
    lab.start(owner)


def test_the_next_move_is_answered_by_another_keyd(lab: Lab) -> None:
    """keyd is killed right after it answered UPDATE_SA_ADDRESSES (etcd holds the new
    address: it is written before the answer leaves); the next MOBIKE message goes to the
    other instance, which continues the IKE SA from etcd."""
    before = one_sa(lab, "mo")
    log = Path(lab.state.processes["ping:mo"].log)
    second, third = MOVE_ADDRESSES[1], MOVE_ADDRESSES[2]
    lab.move_client("mo", second)
    wait("etcd to hold the second address", lambda: row_of(lab, "mo")["peer"] == f"{second}:4500",
         20)
    answered_by = row_of(lab, "mo")["keyd"]
    lab.kill(answered_by, signal.SIGKILL)
    moved_at = time.time()
    lab.move_client("mo", third)
    wait("the other keyd to answer the next move", lambda: (
        (r := row_of(lab, "mo"))["peer"] == f"{third}:4500" and r["keyd"] != answered_by
        and child_peers(lab, r) == {f"{third}:4500"}), 60)
    wait("the ping to go on", lambda: answered_after(log, moved_at + 0.05), 30)
    assert identity(one_sa(lab, "mo")) == identity(before)
    lab.start(answered_by)


def _keyd_config(lab: Lab, index: int) -> Path:
    return lab.dir / "config" / f"keyd-{index}.toml"


def _set_redirect(lab: Lab, to: str | None) -> None:
    """Every keyd instance with `redirect_to` set (or not), restarted."""
    for i in (1, 2):
        path = _keyd_config(lab, i)
        lines = [ln for ln in path.read_text().splitlines()
                 if not ln.startswith("redirect_to")]
        if to is not None:
            lines.insert(lines.index("[keyd]") + 1, f'redirect_to = "{to}"')
        path.write_text("\n".join(lines) + "\n")
        lab.kill(f"keyd-{i}")
        lab.start(f"keyd-{i}")


def test_redirect_in_ike_sa_init_and_of_an_established_client(lab: Lab) -> None:
    lab.start_other_gateway()
    _set_redirect(lab, OTHER_GATEWAY)
    try:
        lab.add_client("newcomer")
        sa = one_sa(lab, "newcomer")
        assert sa.remote.split("[")[0] == OTHER_GATEWAY, sa
    finally:
        _set_redirect(lab, None)
    lab.add_client("stayer")
    assert one_sa(lab, "stayer").remote.split("[")[0] == A.VIP
    row = row_of(lab, "stayer")
    ctl(lab, "client", "redirect", row["ike_sa_id"], "--to", OTHER_GATEWAY)
    wait("the client to reconnect at the other gateway", lambda: any(
        s.state == "ESTABLISHED" and s.remote.split("[")[0] == OTHER_GATEWAY
        for s in lab.client_sas("stayer")), 60)
    # and it leaves the cluster (it deletes its IKE SA here)
    wait("the cluster to forget it", lambda: not [
        r for r in ctl(lab, "client", "list")
        if r["identity"] == f"stayer.{CLIENT_DOMAIN}"], 60)
