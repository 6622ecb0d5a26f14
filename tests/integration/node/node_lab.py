"""Two node agents in network namespaces, a real etcd behind a forwarder, scapy as client.

    client 10.30.0.7 ─┐                        ┌─ node-1 10.30.0.11 (VIP on lo, TUN ipsc0)
                      ├── hub (bridge, 10.30.0.2: etcd forwarder) ─┤
    server 10.30.0.20 ┘  (10.20.0.10 on lo)    └─ node-2 10.30.0.12 (VIP on lo, TUN ipsc0)

The client's route to the VIP and the server's route to the client's virtual IP play the
sprayer's part: tests flip them to move the client. ESP is built and checked by scapy's
SecurityAssociation (an independent peer). etcd is the session's real etcd, reached from the
hub namespace through a TCP forwarder the test can pause (an etcd outage). Namespaces carry a
per-run prefix and are deleted, and every process stopped by PID, when the fixture ends.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.packet import Raw, raw
from tests_node_helpers import wait_until

from cluster.lab import netns
from cluster.lab.forwarder import pipe
from cluster.procs import spawn, stop_pid
from cluster.store import (
    Assignment,
    ChildSaRecord,
    Keyspace,
    NodeRecord,
    SeqRecord,
    Store,
    write_data_key,
)

VIP = "203.0.113.10"
CLIENT = "10.30.0.7"
SERVER = "10.20.0.10"
VIRTUAL_IP = "10.99.0.7"
HUB_IP = "10.30.0.2"
NODE_IPS = {"node-1": "10.30.0.11", "node-2": "10.30.0.12"}
IKE_SA_ID = "0123456789abcdef" + "fedcba9876543210"
SPI_IN = 0xC0DE0001
SPI_OUT = 0xC11E0001
ETCD_PORT = 2379


def _root_ok() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")


def socket_in(ns: str, kind: int = socket.SOCK_DGRAM) -> socket.socket:
    """A socket created inside namespace ns (made on a throw-away thread that entered it)."""
    out: list[socket.socket | BaseException] = []

    def make() -> None:
        try:
            netns.enter(ns)
            out.append(socket.socket(socket.AF_INET, kind))
        except BaseException as e:
            out.append(e)
    t = threading.Thread(target=make)
    t.start()
    t.join()
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


class Forwarder:
    """TCP forwarder: HUB_IP:2379 in the hub namespace → the session etcd (root namespace).
    `pause()` closes every connection and refuses new ones: etcd is unreachable."""

    def __init__(self, ns: str, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket_in(ns, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((HUB_IP, ETCD_PORT))
        self.listener.listen(64)
        self.paused = False
        self.conns: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            r, _, _ = select.select([self.listener], [], [], 0.2)
            if not r:
                continue
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if self.paused:
                conn.close()
                continue
            try:
                up = socket.create_connection(self.target, timeout=5)
            except OSError:
                conn.close()
                continue
            up.settimeout(None)
            with self.lock:
                self.conns |= {conn, up}
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    def pause(self) -> None:
        self.paused = True
        with self.lock:
            for s in self.conns:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()
            self.conns.clear()

    def resume(self) -> None:
        self.paused = False

    def close(self) -> None:
        self.closed = True
        self.pause()
        self.listener.close()


@dataclass
class Client:
    """The client: scapy SAs and a UDP socket on CLIENT:4500 in its namespace."""

    sock: socket.socket
    to_node: SecurityAssociation
    from_node: SecurityAssociation
    icmp_seq: int = 0
    inner_src: str = VIRTUAL_IP  # the source of the pings inside the tunnel

    def send_ping(self, payload: bytes = b"ping") -> int:
        self.icmp_seq += 1
        inner = (IP(src=self.inner_src, dst=SERVER) / ICMP(id=0x4242, seq=self.icmp_seq)
                 / Raw(payload))
        wire = raw(self.to_node.encrypt(inner))
        self.sock.sendto(wire[28:], (VIP, 4500))  # the UDP payload: ESP after IP + UDP
        return self.icmp_seq

    def receive(self, timeout_s: float) -> tuple[int, bytes, tuple[str, int]] | None:
        """(ESP sequence number, inner packet, sender) of the next ESP packet, or None."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                return None
            data, sender = self.sock.recvfrom(65535)
            if len(data) < 8 or data[:4] == b"\x00\x00\x00\x00":
                continue
            outer = IP(raw(IP(src=VIP, dst=CLIENT) / UDP(sport=4500, dport=4500) / Raw(data)))
            inner = self.from_node.decrypt(outer)
            return int.from_bytes(data[4:8]), raw(inner), sender
        return None

    def ping(self, timeout_s: float = 3.0) -> tuple[int, bytes] | None:
        """One echo through the tunnel: (ESP seq of the reply, reply) or None."""
        seq = self.send_ping()
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            got = self.receive(left)
            if got is None:
                return None
            esp_seq, inner, _ = got
            pkt = IP(inner)
            if pkt.haslayer(ICMP) and pkt[ICMP].type == 0 and pkt[ICMP].seq == seq:
                return esp_seq, inner
        return None


@dataclass
class NodeLab:
    prefix: str
    tmp: Path
    store: Store
    keyspace: Keyspace
    forwarder: Forwarder
    data_key_file: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    keys: dict[str, bytes] = field(default_factory=dict)

    def ns(self, name: str) -> str:
        return self.prefix + name

    def config(self, node_id: str, **extra: object) -> Path:
        values = {
            "id": node_id, "vip": VIP, "address": NODE_IPS[node_id], "capacity": 100,
            "tun": "ipsc0", "health_port": 4501, "lease_ttl_s": 3,
            "checkpoint_packets": 16, "checkpoint_ms": 100, "replay_window": 128,
            "keyd_address": HUB_IP, **extra,
        }
        lines = [
            "[cluster]", f'name = "{self.keyspace.cluster}"', 'prefix = "/ipsec-cluster"',
            f'data_key_file = "{self.data_key_file}"',
            "[etcd]", f'endpoints = ["http://{HUB_IP}:{ETCD_PORT}"]', "timeout_s = 1.0",
            "[log]", 'level = "info"', "[metrics]", 'listen = "127.0.0.1:9411"', "[node]",
        ]
        for k, v in values.items():
            lines.append(f"{k} = " + (f'"{v}"' if isinstance(v, str) else str(v).lower()))
        path = self.tmp / f"{node_id}.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start_node(self, node_id: str, env: dict[str, str] | None = None,
                   **extra: object) -> None:
        short = node_id.replace("node-", "n")
        argv = ["ip", "netns", "exec", self.ns(short),
                str(Path(sys.executable).parent / "cluster-node"), "--config",
                str(self.config(node_id, **extra))]
        self.procs[node_id] = spawn(argv, self.tmp / f"{node_id}.log",
                                    env={**os.environ, **env} if env else None)
        ok = wait_until(lambda: self.registered(node_id), 20)
        assert ok, f"{node_id} did not register:\n{self.log(node_id)}"

    def registered(self, node_id: str) -> bool:
        proc = self.procs[node_id]
        if proc.poll() is not None:
            raise AssertionError(f"{node_id} exited {proc.returncode}:\n{self.log(node_id)}")
        return self.store.get(NodeRecord, node_id) is not None

    def kill_node(self, node_id: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(node_id)
        os.killpg(proc.pid, sig)
        proc.wait(10)

    def stop_node(self, node_id: str) -> None:
        proc = self.procs.pop(node_id, None)
        if proc is not None:
            stop_pid(proc.pid)

    def log(self, node_id: str) -> str:
        p = self.tmp / f"{node_id}.log"
        return p.read_text(errors="replace")[-4000:] if p.exists() else ""

    def in_ns(self, name: str, *argv: str) -> str:
        return netns.in_ns(self.ns(name), list(argv)).stdout

    def metrics(self, node_id: str) -> dict[str, float]:
        """The node's Prometheus metrics ({} while it does not answer)."""
        short = node_id.replace("node-", "n")
        proc = netns.in_ns(self.ns(short), [
            sys.executable, "-c", "import urllib.request;print(urllib.request.urlopen("
            "'http://127.0.0.1:9411/metrics',timeout=5).read().decode())"], check=False)
        text = proc.stdout if proc.returncode == 0 else ""
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def steer(self, node_id: str) -> None:
        """The sprayer's part: the client's ESP and the server's replies go via node_id."""
        via = NODE_IPS[node_id]
        netns.route(self.ns("cli"), f"{VIP}/32", "via", via)
        netns.route(self.ns("srv"), f"{VIRTUAL_IP}/32", "via", via)

    def child_sa(self, encr: str = "aes128gcm16", integ: str | None = None,
                 esn: bool = True) -> ChildSaRecord:
        rng = random.Random(7)
        klen = {"aes128gcm16": 20, "aes256gcm16": 36, "chacha20poly1305": 36,
                "aes128": 16, "aes256": 32}[encr]
        ilen = {None: 0, "sha256": 32, "sha384": 48, "sha512": 64}[integ]
        self.keys = {"enc_in": rng.randbytes(klen), "enc_out": rng.randbytes(klen),
                     "integ_in": rng.randbytes(ilen), "integ_out": rng.randbytes(ilen)}
        return ChildSaRecord(
            spi_in=SPI_IN, spi_out=SPI_OUT, ike_sa_id=IKE_SA_ID, encr=encr, integ=integ,
            esn=esn, enc_key_in=self.keys["enc_in"], integ_key_in=self.keys["integ_in"],
            enc_key_out=self.keys["enc_out"], integ_key_out=self.keys["integ_out"],
            ts_local=["10.20.0.0/24"], ts_remote=[f"{VIRTUAL_IP}/32"], peer_addr=CLIENT,
            peer_port=4500, udp_encap=True, virtual_ip=VIRTUAL_IP, identity="client-1",
            created_at=time.time(), soft_lifetime_s=3000, hard_lifetime_s=3600)

    def client(self, record: ChildSaRecord) -> Client:
        scapy_encr = {"aes128gcm16": "AES-GCM", "aes256gcm16": "AES-GCM",
                      "chacha20poly1305": "CHACHA20-POLY1305", "aes128": "AES-CBC",
                      "aes256": "AES-CBC"}[record.encr]
        scapy_integ = {None: None, "sha256": "SHA2-256-128", "sha384": "SHA2-384-192",
                       "sha512": "SHA2-512-256"}[record.integ]
        nat_t = UDP(sport=4500, dport=4500)

        def sa(spi: int, enc: bytes, integ: bytes, src: str, dst: str) -> SecurityAssociation:
            return SecurityAssociation(
                ESP, spi=spi, crypt_algo=scapy_encr, crypt_key=enc, auth_algo=scapy_integ,
                auth_key=integ or None, tunnel_header=IP(src=src, dst=dst), nat_t_header=nat_t,
                esn_en=record.esn)
        sock = socket_in(self.ns("cli"))
        sock.bind((CLIENT, 4500))
        return Client(sock, sa(record.spi_in, record.enc_key_in, record.integ_key_in,
                               CLIENT, VIP),
                      sa(record.spi_out, record.enc_key_out, record.integ_key_out,
                         VIP, CLIENT))

    def assign(self, node_id: str, epoch: int, phase: str = "active",
               previous: str | None = None) -> None:
        self.store.put(Assignment(IKE_SA_ID, node_id, epoch, phase,  # type: ignore[arg-type]
                                  previous, time.time()))

    def seq(self) -> SeqRecord | None:
        v = self.store.get(SeqRecord, SPI_IN)
        return v.record if v else None


def _topology(prefix: str) -> None:
    hub = prefix + "hub"
    netns.add(hub)
    netns.bridge(hub, "br0")
    netns.address(hub, "br0", f"{HUB_IP}/24")
    for name, ip in (("cli", CLIENT), ("srv", "10.30.0.20"), ("n1", NODE_IPS["node-1"]),
                     ("n2", NODE_IPS["node-2"])):
        ns = prefix + name
        netns.add(ns)
        netns.veth(ns, "eth0", hub, f"v{name}")
        netns.enslave(hub, f"v{name}", "br0")
        netns.address(ns, "eth0", f"{ip}/24")
        netns.sysctl(ns, "net.ipv4.conf.all.rp_filter", "0")
        netns.sysctl(ns, "net.ipv4.conf.default.rp_filter", "0")
    netns.address(prefix + "srv", "lo", f"{SERVER}/32")
    for name in ("n1", "n2"):
        ns = prefix + name
        netns.address(ns, "lo", f"{VIP}/32")
        netns.sysctl(ns, "net.ipv4.ip_forward", "1")
        netns.route(ns, "10.20.0.0/24", "via", "10.30.0.20")


@pytest.fixture
def node_lab(etcd_endpoint: str, tmp_path: Path) -> Iterator[NodeLab]:
    _root_ok()
    prefix = f"ipn{uuid.uuid4().hex[:6]}-"
    keyspace = Keyspace(f"node{uuid.uuid4().hex[:8]}")
    host, _, port = etcd_endpoint.removeprefix("http://").rpartition(":")
    forwarder = None
    lab = None
    try:
        _topology(prefix)
        forwarder = Forwarder(prefix + "hub", (host, int(port)))
        data_key_file = tmp_path / "data.key"
        data_key = write_data_key(data_key_file)
        store = Store([etcd_endpoint], keyspace, data_key)
        lab = NodeLab(prefix, tmp_path, store, keyspace, forwarder, data_key_file)
        yield lab
    finally:
        if lab is not None:
            for node_id in list(lab.procs):
                lab.stop_node(node_id)
            with contextlib.suppress(Exception):
                lab.store.close()
        if forwarder is not None:
            forwarder.close()
        for ns in netns.listed(prefix):
            netns.delete(ns)
