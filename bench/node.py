"""Node data-plane capacity: receive → decrypt → forward, 1400-byte packets, one core.

Three namespaces: a generator (the client side), the node, a sink behind it.

    gen 10.50.0.1 ── 10.50.0.2 node (VIP on lo, TUN) 10.40.0.1 ── 10.40.0.2 sink

The node runs the real data path (`cluster.node.datapath.Datapath`, the class `cluster-node`
runs) with one AES-128-GCM Child SA installed directly — no etcd, which the data path never
waits on anyway. The generator encrypts its packets *before* the clock starts (with the ESP
core as the client) and then only sends them, so it is not the bottleneck. Decrypted packets
leave the node's TUN and are routed to the sink, which drops them.

Reported: packets the node forwarded per second of the node's own CPU time (utime + stime
from /proc, all threads: "per core", whatever else the shared machine does), beside the
one-core AES-128-GCM limit of `cryptography` measured in the same run (decrypt only), and the
outbound direction (TUN → encrypt → UDP) the same way. strongSwan's kernel-libipsec baseline
is DESIGN.md's figure (3.6-4 k packets/s), not re-measured here.

`python -m bench node` runs it (root). `python -m bench.node serve|generate ...` are the
node and the generator it starts inside the namespaces.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench import Row

PACKET_BYTES = 1400
PACKETS = 200_000
SPI_IN, SPI_OUT = 0xBE000001, 0xBE000002
VIP = "203.0.113.10"
GEN, NODE_GEN, NODE_SINK, SINK = "10.50.0.1", "10.50.0.2", "10.40.0.1", "10.40.0.2"
CLIENT_VIP, SERVER = "10.99.0.7", "10.20.0.10"
KEY_IN = bytes(range(20))
KEY_OUT = bytes(range(20, 40))
LIBIPSEC_PPS = 4000.0  # DESIGN.md: strongSwan kernel-libipsec as a gateway, 3.6-4 k packets/s


def _inner(n: int, src: str, dst: str) -> bytes:
    """An IPv4/UDP packet of n bytes (the checksum left 0: nobody reads it)."""
    import struct
    payload = bytes(n - 28)
    udp = struct.pack("!HHHH", 40000, 9, 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, n, 0, 0x4000, 64, 17, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    from cluster.node.relay import internet_checksum
    header = header[:10] + struct.pack("!H", internet_checksum(header)) + header[12:]
    return header + udp


def _client_sa() -> Any:
    from cluster.esp import ChildSa, IvSource, SaKeys, TrafficSelector
    return ChildSa(spi_in=SPI_OUT, spi_out=SPI_IN, encr="aes128gcm16", integ=None, esn=True,
                   keys=SaKeys(KEY_OUT, KEY_IN), iv_source=IvSource(b"\x00\x00\x00\x02"),
                   ts_remote=(TrafficSelector.from_network("0.0.0.0/0"),), replay_window=4096)


def _record() -> Any:
    from cluster.store import ChildSaRecord
    return ChildSaRecord(
        spi_in=SPI_IN, spi_out=SPI_OUT, ike_sa_id="ab" * 16, encr="aes128gcm16", integ=None,
        esn=True, enc_key_in=KEY_IN, integ_key_in=b"", enc_key_out=KEY_OUT, integ_key_out=b"",
        ts_local=["10.20.0.0/24"], ts_remote=[f"{CLIENT_VIP}/32"], peer_addr=GEN,
        peer_port=4500, udp_encap=True, virtual_ip=CLIENT_VIP, identity="bench",
        created_at=time.time(), soft_lifetime_s=3000, hard_lifetime_s=3600)


# -- inside the node namespace --------------------------------------------------------------
def serve(stats_file: str) -> None:
    from cluster.esp import IvSource, SaCounters
    from cluster.node.datapath import Datapath
    from cluster.node.sa import NodeSa
    from cluster.node.tun import open_tun
    tun = open_tun("ipsb0", 1500)
    subprocess.run(["ip", "route", "replace", f"{CLIENT_VIP}/32", "dev", "ipsb0"], check=True)
    dp = Datapath(vip=VIP, natt_port=4500, tun_fd=tun, raw_esp=False)
    sa = NodeSa(_record(), 4096, IvSource(b"\x00\x00\x00\x01"))
    sa.restore(SaCounters(0, 0, 0))
    sa.send_limit = 1 << 62
    dp.install(sa)
    dp.send_on(sa)
    dp.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    Path(stats_file + ".ready").write_text("1")
    done.wait()
    dp.stop()
    t = dp.io_totals()
    Path(stats_file).write_text(json.dumps({
        "packets_in": t.packets_in, "packets_out": t.packets_out, "tun_errors": t.tun_errors,
        "drops": {k.value: v for k, v in (dp.table.drops + dp.drops).items()}}))


# -- inside the generator namespace ---------------------------------------------------------
def generate(count: int) -> None:
    sa = _client_sa()
    inner = _inner(PACKET_BYTES, CLIENT_VIP, SERVER)
    packets = [sa.seal(inner, 0.0) for _ in range(count)]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    s.bind((GEN, 4500))
    send = s.sendto
    dst = (VIP, 4500)
    t0 = time.perf_counter()
    sent = 0
    for p in packets:
        try:
            send(p, dst)
            sent += 1
        except OSError:  # ENOBUFS: the generator outran the link; the node cannot see it
            time.sleep(0)
    print(json.dumps({"sent": sent, "seconds": time.perf_counter() - t0}))


def sink_outbound(count: int, seconds: float) -> None:
    """In the sink namespace: send `count` server → client packets towards the node."""
    inner = bytes(PACKET_BYTES - 28)  # the UDP payload of a 1400-byte IP packet
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((SERVER, 9))
    t0 = time.perf_counter()
    sent = 0
    while sent < count and time.perf_counter() - t0 < seconds:
        try:
            s.sendto(inner, (CLIENT_VIP, 40000))
            sent += 1
        except OSError:
            time.sleep(0)
    print(json.dumps({"sent": sent, "seconds": time.perf_counter() - t0}))


# -- the orchestrator ------------------------------------------------------------------------
def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def _topology(prefix: str) -> None:
    gen, node, sink = prefix + "gen", prefix + "node", prefix + "sink"
    for ns in (gen, node, sink):
        _sh("ip", "netns", "add", ns)
        _sh("ip", "-n", ns, "link", "set", "lo", "up")
    _sh("ip", "link", "add", "eth0", "netns", gen, "type", "veth", "peer", "name", "gen0",
        "netns", node)
    _sh("ip", "link", "add", "eth0", "netns", sink, "type", "veth", "peer", "name", "sink0",
        "netns", node)
    for ns, dev, cidr in ((gen, "eth0", f"{GEN}/24"), (node, "gen0", f"{NODE_GEN}/24"),
                          (node, "sink0", f"{NODE_SINK}/24"), (sink, "eth0", f"{SINK}/24"),
                          (node, "lo", f"{VIP}/32"), (sink, "lo", f"{SERVER}/32")):
        _sh("ip", "-n", ns, "addr", "add", cidr, "dev", dev)
        _sh("ip", "-n", ns, "link", "set", dev, "up")
    _sh("ip", "-n", gen, "route", "add", f"{VIP}/32", "via", NODE_GEN)
    _sh("ip", "-n", node, "route", "add", "10.20.0.0/24", "via", SINK)
    _sh("ip", "-n", sink, "route", "add", f"{CLIENT_VIP}/32", "via", NODE_SINK)
    for ns in (gen, node, sink):
        _sh("ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv4.conf.all.rp_filter=0")
    _sh("ip", "netns", "exec", node, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
    # the sink drops what reaches it: no forwarding, and the server address has no listener
    # for the benchmark's port... so drop before the UDP layer answers with ICMP
    _sh("ip", "netns", "exec", sink, "sysctl", "-q", "-w", "net.ipv4.icmp_ratelimit=1000000")
    _sh("ip", "-n", gen, "route", "add", f"{CLIENT_VIP}/32", "via", NODE_GEN)


def _cpu_seconds(pid: int) -> float:
    return sum(_cpu_split(pid))


def _cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _node_pid(launcher: subprocess.Popen[bytes]) -> int:
    """The python process under `ip netns exec` (exec'd in place: same pid)."""
    return launcher.pid


def _crypto_limit() -> float:
    """Packets per second one core decrypts with cryptography's AES-128-GCM (1400 bytes)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    aead = AESGCM(bytes(16))
    nonce, aad = bytes(12), bytes(8)
    ct = aead.encrypt(nonce, bytes(PACKET_BYTES + 2), aad)
    n = 100_000
    best = 0.0
    for _ in range(3):
        t0 = time.process_time()
        for _ in range(n):
            aead.decrypt(nonce, ct, aad)
        best = max(best, n / (time.process_time() - t0))
    return best


def _direction(prefix: str, tmp: Path, outbound: bool) -> dict[str, float]:
    py = sys.executable
    stats = tmp / ("out.json" if outbound else "in.json")
    node = subprocess.Popen(["ip", "netns", "exec", prefix + "node", py, "-m", "bench.node",
                             "serve", "--stats", str(stats)], cwd=Path(__file__).parent.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not Path(str(stats) + ".ready").exists():
            if node.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"bench node did not start: {node.stdout.read()!r}")  # type: ignore[union-attr]
            time.sleep(0.05)
        user0, sys0 = _cpu_split(node.pid)
        if outbound:
            argv = [py, "-m", "bench.node", "sink", "--count", str(PACKETS), "--seconds", "10"]
            ns = prefix + "sink"
        else:
            argv = [py, "-m", "bench.node", "generate", "--count", str(PACKETS)]
            ns = prefix + "gen"
        gen = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                             cwd=Path(__file__).parent.parent, check=True)
        time.sleep(0.5)  # let the node drain its socket buffer
        user1, sys1 = _cpu_split(node.pid)
        user, system = user1 - user0, sys1 - sys0
        cpu = user + system
        node.send_signal(signal.SIGTERM)
        node.wait(20)
        result = json.loads(stats.read_text())
        g = json.loads(gen.stdout)
        carried = result["packets_out" if outbound else "packets_in"]
        return {"carried": carried, "sent": g["sent"], "gen_seconds": g["seconds"],
                "node_cpu": cpu, "user": user, "system": system,
                "per_core": carried / cpu if cpu else 0.0}
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()


def run() -> list[Row]:
    if os.geteuid() != 0:
        return [{"metric": "node data plane", "value": "skipped", "unit": "",
                 "note": "needs root (network namespaces)"}]
    import tempfile
    prefix = f"bn{uuid.uuid4().hex[:5]}-"
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            _topology(prefix)
            limit = _crypto_limit()
            inbound = _direction(prefix, Path(tmp), outbound=False)
            outbound = _direction(prefix, Path(tmp), outbound=True)
        finally:
            for ns in ("gen", "node", "sink"):
                subprocess.run(["ip", "netns", "delete", prefix + ns], capture_output=True)
    rows.append({"metric": "AES-128-GCM decrypt, 1400 B, one core (cryptography)",
                 "value": limit, "unit": "packets/s", "note": "the crypto limit"})
    for name, r in (("receive → decrypt → TUN", inbound), ("TUN → encrypt → send", outbound)):
        rows.append({
            "metric": f"node {name}, 1400 B, per core", "value": r["per_core"],
            "unit": "packets/s", "baseline": LIBIPSEC_PPS,
            "baseline_name": "strongSwan kernel-libipsec, DESIGN.md",
            "ratio": r["per_core"] / LIBIPSEC_PPS,
            "goal": "≥ 10x libipsec, ≥ 25 % of crypto limit",
            "note": (f"{r['per_core'] / limit:.0%} of the crypto limit; {r['carried']:,} of "
                     f"{r['sent']:,} packets carried, node CPU {r['node_cpu']:.2f} s "
                     f"({r['user'] / r['node_cpu']:.0%} user)" if r["node_cpu"] else ""),
        })
    gen_pps = inbound["sent"] / inbound["gen_seconds"] if inbound["gen_seconds"] else 0.0
    rows.append({"metric": "generator send rate (pre-encrypted)", "value": gen_pps,
                 "unit": "packets/s", "note": "must exceed the node's rate"})
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.node")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--stats", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--count", type=int, default=PACKETS)
    k = sub.add_parser("sink")
    k.add_argument("--count", type=int, default=PACKETS)
    k.add_argument("--seconds", type=float, default=10)
    args = p.parse_args(argv)
    if args.cmd == "serve":
        serve(args.stats)
    elif args.cmd == "generate":
        generate(args.count)
    else:
        sink_outbound(args.count, args.seconds)


if __name__ == "__main__":
    main()
