"""A kernel-dataplane node that was SIGKILLed leaves its XFRM states and outbound policies in
its namespace; the next start removes exactly those (its own by their if_id) and leaves
another IPsec daemon's states and policies alone."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.host import inside_netns
from cluster.lab import vm
from cluster.node.kernel import KernelPlane
from cluster.node.kernel_sa import IF_ID
from cluster.xfrm.kernel import XfrmSocket

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parents[2]
VIP, CLIENT, FOREIGN = "203.0.113.10", "10.9.2.2", "10.9.2.3"
VIRTUAL_IP = "10.77.0.2"
SPI_IN, SPI_OUT = 0xC2000001, 0xCE000002
FOREIGN_SPI = 0x0000F001

#: the node's plane in its own process, owning one SA (inbound and outbound states, the
#: outbound policy), until it is killed
NODE = f"""
import sys, time
from pathlib import Path
from cluster.esp import SaCounters
from cluster.node.counters import TakeOver, Traffic
from cluster.node.events import SaStart
from cluster.node.kernel import KernelPlane
from cluster.node.kernel_io import create_interface
from cluster.node.kernel_sa import IF_ID
from cluster.store import ChildSaRecord
create_interface("kr0", IF_ID, 1400)
plane = KernelPlane(vip="{VIP}", natt_port=4500, replay_window=128, jump_packets=1024,
                    checkpoint_packets=8, checkpoint_ms=200, fence_grace_s=1.0)
plane.start()
record = ChildSaRecord(
    spi_in={SPI_IN}, spi_out={SPI_OUT}, ike_sa_id="cd" * 16, encr="aes128gcm16", integ=None,
    esn=True, enc_key_in=bytes(20), integ_key_in=b"", enc_key_out=bytes(range(20)),
    integ_key_out=b"", ts_local=["10.20.0.0/24"], ts_remote=["{VIRTUAL_IP}/32"],
    peer_addr="{CLIENT}", peer_port=4500, udp_encap=True, virtual_ip="{VIRTUAL_IP}",
    identity="client-1", created_at=time.time(), soft_lifetime_s=3000, hard_lifetime_s=3600)
plane.install_sa(record, None, moved=False)
plane.install_counters({{{SPI_IN}: SaStart(TakeOver(SaCounters(100, 0, 0), False), Traffic())}})
plane.send_on({{{SPI_IN}: 1 << 40}})
Path(sys.argv[1]).write_text("1")
time.sleep(3600)
"""


def _ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True)


@pytest.fixture
def ns() -> Iterator[str]:
    subprocess.run(["modprobe", "-a", "xfrm_user", "esp4", "xfrm_interface"], check=True)
    name = f"kr{time.monotonic_ns() % 100000}-node"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        _ip(name, "link", "set", "lo", "up")
        _ip(name, "addr", "add", f"{VIP}/32", "dev", "lo")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _xfrm(ns: str) -> tuple[dict[int, int], list[tuple[str, str, int]]]:
    """(spi -> if_id of every state, (direction, dst, if_id) of every policy)."""
    with inside_netns(ns):
        x = XfrmSocket()
    try:
        states = {i.state.spi: i.state.if_id for i in x.dump_states()}
        policies = sorted((p.direction, p.dst, p.if_id) for p in x.dump_policies())
        return states, policies
    finally:
        x.close()


def test_start_removes_what_a_killed_node_left_and_only_that(ns: str, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    node = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", NODE,
                             str(ready)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + vm.patient(30)
        while not ready.exists():
            assert node.poll() is None, node.stdout.read() if node.stdout else b""
            assert time.monotonic() < deadline, "the node did not install its SA"
            time.sleep(0.1)
        node.send_signal(signal.SIGKILL)
        node.wait(30)
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
    # what the killed node left, and another daemon's state and policy beside it
    subprocess.run(["ip", "-n", ns, "xfrm", "state", "add", "src", VIP, "dst", FOREIGN,
                    "proto", "esp", "spi", hex(FOREIGN_SPI), "reqid", "9", "mode", "tunnel",
                    "aead", "rfc4106(gcm(aes))", "0x" + "11" * 20, "128"], check=True)
    subprocess.run(["ip", "-n", ns, "xfrm", "policy", "add", "src", "0.0.0.0/0", "dst",
                    "10.88.0.0/24", "dir", "out", "tmpl", "src", VIP, "dst", FOREIGN, "proto",
                    "esp", "reqid", "9", "mode", "tunnel"], check=True)
    states, policies = _xfrm(ns)
    assert states == {SPI_IN: IF_ID, SPI_OUT: IF_ID, FOREIGN_SPI: 0}
    assert ("out", f"{VIRTUAL_IP}/32", IF_ID) in policies
    assert ("out", "10.88.0.0/24", 0) in policies

    with inside_netns(ns):
        plane = KernelPlane(vip=VIP, natt_port=4500, replay_window=128, jump_packets=1024,
                            checkpoint_packets=8, checkpoint_ms=200, fence_grace_s=1.0)
    try:
        plane.start()
        states, policies = _xfrm(ns)
        assert states == {FOREIGN_SPI: 0}
        assert [p for p in policies if p[0] == "out"] == [("out", "10.88.0.0/24", 0)]
        # the interface's own in/fwd policies, installed again
        assert sorted(p for p in policies if p[2] == IF_ID) == sorted(
            (d, net, IF_ID) for d in ("in", "fwd") for net in ("0.0.0.0/0", "::/0"))
    finally:
        plane.close()
