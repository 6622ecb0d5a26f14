"""KernelPlane (cluster.node.kernel) against the VM's kernel: an SA installed as XFRM states,
take-over counters set with NEWAE and read back with GETAE, sending only between send_on
and stop_sending (and stopped by aevent at the margin below the send limit), and ESP
between a peer running the project's own ESP (cluster.esp) and the node's kernel."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from scapy.layers.inet import ICMP, IP

from cluster.esp import ChildSa, IvSource, SaCounters, SaKeys, TrafficSelector
from cluster.host import inside_netns
from cluster.node.counters import TakeOver, Traffic
from cluster.node.events import SaStart
from cluster.node.kernel import KernelPlane
from cluster.node.kernel_io import KernelSockets, create_interface
from cluster.node.kernel_sa import IF_ID
from cluster.store import ChildSaRecord
from cluster.xfrm import KernelError
from cluster.xfrm.kernel import XfrmSocket

pytestmark = pytest.mark.kernel

VIP = "203.0.113.10"
NODE, CLIENT = "10.9.1.1", "10.9.1.2"
SERVER = "10.20.0.1"  # the protected side, on the node itself
VIRTUAL_IP = "10.77.0.2"
SPI_IN, SPI_OUT = 0xC1000001, 0xCE000001
WINDOW = 128
JUMP, D = 32, 8  # margin J/2 = 16, aevents every 2 packets


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True)


@dataclass
class Lab:
    node: str
    client: str


@pytest.fixture
def lab() -> Iterator[Lab]:
    subprocess.run(["modprobe", "-a", "xfrm_user", "esp4", "xfrm_interface"], check=True)
    tag = f"kp{time.monotonic_ns() % 100000}"
    node, client = f"{tag}-node", f"{tag}-cli"
    for ns in (node, client):
        _ip("netns", "add", ns)
    try:
        _ip("link", "add", "vn", "netns", node, "type", "veth", "peer", "vc", "netns", client)
        _ip("-n", node, "addr", "add", f"{NODE}/24", "dev", "vn")
        _ip("-n", client, "addr", "add", f"{CLIENT}/24", "dev", "vc")
        for ns, dev in ((node, "vn"), (client, "vc")):
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", node, "addr", "add", f"{VIP}/32", "dev", "lo")
        _ip("-n", node, "addr", "add", f"{SERVER}/32", "dev", "lo")
        _ip("-n", client, "route", "add", f"{VIP}/32", "via", NODE)
        yield Lab(node, client)
    finally:
        for ns in (node, client):
            subprocess.run(["ip", "netns", "del", ns], check=False)


def _record() -> ChildSaRecord:
    keys = [bytes([n]) * 20 for n in (1, 2)]
    return ChildSaRecord(
        spi_in=SPI_IN, spi_out=SPI_OUT, ike_sa_id="ab" * 16, encr="aes128gcm16", integ=None,
        esn=True, enc_key_in=keys[0], integ_key_in=b"", enc_key_out=keys[1], integ_key_out=b"",
        ts_local=["10.20.0.0/24"], ts_remote=[f"{VIRTUAL_IP}/32"], peer_addr=CLIENT,
        peer_port=4500, udp_encap=True, virtual_ip=VIRTUAL_IP, identity="client-1",
        created_at=time.time(), soft_lifetime_s=3000, hard_lifetime_s=3600)


class Peer:
    """The client: the project's ESP (cluster.esp) over a UDP socket in its namespace."""

    def __init__(self, ns: str, r: ChildSaRecord) -> None:
        self.sa = ChildSa(spi_in=r.spi_out, spi_out=r.spi_in, encr=r.encr, integ=r.integ,
                          esn=r.esn, keys=SaKeys(r.enc_key_out, r.enc_key_in),
                          ts_remote=(TrafficSelector.from_network("10.20.0.0/24"),),
                          replay_window=WINDOW, iv_source=IvSource(b"\x00\x00\x00\x07"))
        with inside_netns(ns):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((CLIENT, 4500))
        self.sock.settimeout(2.0)
        self.seq = 0

    def ping(self, src: str = VIRTUAL_IP, wait_s: float = 3.0) -> tuple[int, bytes] | None:
        """One echo request through the SA; (ESP sequence number, inner reply) or None."""
        self.seq += 1
        inner = bytes(IP(src=src, dst=SERVER) / ICMP(id=7, seq=self.seq) / (b"k" * 32))
        self.sock.sendto(self.sa.seal(inner, time.monotonic()), (VIP, 4500))
        deadline = time.monotonic() + wait_s
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                return None
            seq = int.from_bytes(data[4:8])
            reply = self.sa.receive(data, time.monotonic())
            if reply is not None and IP(reply)[ICMP].seq == self.seq:
                return seq, reply
        return None

    def close(self) -> None:
        self.sock.close()


def _states(ns: str) -> dict[int, object]:
    with inside_netns(ns):
        x = XfrmSocket()
    try:
        return {i.state.spi: i for i in x.dump_states()}
    finally:
        x.close()


def _xfrm_stat(ns: str) -> dict[str, int]:
    out = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/xfrm_stat"],
                         capture_output=True, text=True, check=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


def _diagnose(ns: str) -> str:
    """What the node's kernel says, for a failure's message."""
    out = []
    for argv in (["ip", "-s", "xfrm", "state"], ["ip", "xfrm", "policy"],
                 ["ip", "-s", "link"], ["ip", "route"], ["cat", "/proc/net/xfrm_stat"],
                 ["nstat", "-az"]):
        r = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True,
                           text=True, check=False)
        nonzero = [ln for ln in r.stdout.splitlines() if argv[0] != "nstat"
                   or ln.split()[1:2] != ["0"]]
        out.append(f"$ {' '.join(argv)}\n" + "\n".join(nonzero) + r.stderr)
    return "\n".join(out)


def test_kernel_plane_counters_sending_and_esp(lab: Lab) -> None:
    ike: list[bytes] = []
    with inside_netns(lab.node):
        create_interface("kp0", IF_ID, 1400)
        _ip("route", "add", f"{VIRTUAL_IP}/32", "dev", "kp0")
        plane = KernelPlane(vip=VIP, natt_port=4500, replay_window=WINDOW, jump_packets=JUMP,
                            checkpoint_packets=D, checkpoint_ms=200, fence_grace_s=1.0)
        plane.start()
        io = KernelSockets(vip=VIP, natt_port=4500, health=None, health_reply=lambda d: None,
                           ike_port=None, on_ike=lambda d, a, p: ike.append(d),
                           on_aevents=plane.aevents)
    io.start()
    record = _record()
    peer = Peer(lab.client, record)
    try:
        plane.install_sa(record, None, moved=False)
        states = _states(lab.node)
        assert set(states) == {SPI_IN}  # inbound only: this node does not send on it yet

        # a take-over by checkpoint + jump: out_seq 5000, the window at 40 with 40, 39, 37
        start = SaCounters(5000, 40, 0b1011)
        got = plane.install_counters({SPI_IN: SaStart(TakeOver(start, False),
                                                      Traffic(3, 4, 300, 400))})
        assert got == {SPI_IN: start}
        counters, traffic = plane.counters([SPI_IN])[SPI_IN]
        assert counters == start  # the window read back from the kernel by GETAE
        assert traffic == Traffic(3, 4, 300, 400)

        # the limit within the margin (J/2) of the start: not sent on until it is raised
        # (the client's packet 41 decrypts; nothing answers it)
        plane.send_on({SPI_IN: 5000 + JUMP // 2})
        assert SPI_OUT not in _states(lab.node)
        peer.sa.restore(SaCounters(40, 0, 0))
        assert peer.ping(wait_s=1.0) is None
        plane.raise_send_limits({SPI_IN: 5000 + JUMP})
        assert SPI_OUT in _states(lab.node)

        # ESP both ways: the client's packet 42 decrypts, the reply is the kernel's 5001
        answer = peer.ping()
        assert answer is not None and answer[0] == 5001, (peer.sa.drops, _diagnose(lab.node))
        counters, traffic = plane.counters([SPI_IN])[SPI_IN]
        assert counters.out_seq == 5001 and counters.in_highest == 42
        assert counters.in_bitmap == 0b101111  # 42, 41, 40, 39, 37
        assert traffic.packets_in == 3 + 2 and traffic.packets_out == 4 + 1

        # the restored window refuses a number it holds (39: a replay) ...
        before = _xfrm_stat(lab.node)
        peer.sa.restore(SaCounters(38, 0, 0))
        assert peer.ping(wait_s=1.0) is None
        # ... and the state's selector an inner source that is not the client's
        peer.sa.restore(SaCounters(50, 0, 0))
        assert peer.ping(src="10.77.0.9", wait_s=1.0) is None
        after = _xfrm_stat(lab.node)
        assert after["XfrmInStateSeqError"] == before["XfrmInStateSeqError"] + 1
        assert after["XfrmInStateMismatch"] == before["XfrmInStateMismatch"] + 1

        # IKE behind the non-ESP marker on VIP:4500 is left to the socket: the relay's
        peer.sock.sendto(b"\0\0\0\0" + b"i" * 28, (VIP, 4500))
        deadline = time.monotonic() + 3
        while not ike and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ike == [b"\0\0\0\0" + b"i" * 28]

        # the aevents stop sending once out_seq comes within J/2 of the limit (5064)
        replies = 0
        while replies < JUMP and peer.ping(wait_s=1.5) is not None:
            replies += 1
        assert plane.stats.limit_stops == 1
        assert SPI_OUT not in _states(lab.node)
        stopped = plane.counters([SPI_IN])[SPI_IN][0].out_seq
        assert 5000 + JUMP // 2 <= stopped < 5000 + JUMP and stopped == 5001 + replies
        # a raised limit sends again, from exactly where the kernel stopped
        plane.raise_send_limits({SPI_IN: stopped + JUMP})
        answer = peer.ping()
        assert answer is not None and answer[0] == stopped + 1

        # stop_sending: the outbound state goes, its final count is exact (DELSA)
        plane.stop_sending(frozenset({SPI_IN}))
        assert SPI_OUT not in _states(lab.node)
        assert plane.counters([SPI_IN])[SPI_IN][0].out_seq == stopped + 1
        assert plane.stats.finals_exact >= 2
        assert peer.ping(wait_s=1.0) is None  # decrypted, but nothing sends the reply

        plane.remove_sa(SPI_IN)
        assert _states(lab.node) == {}
        with pytest.raises(KernelError):
            plane.xfrm.get_ae(VIP, SPI_IN, CLIENT)
    finally:
        peer.close()
        io.stop()
        plane.close()
