"""Node data-plane capacity: receive → decrypt → forward, 1400-byte packets, one core.

Three namespaces: a generator (the client side), the node, a sink behind it.

    gen 10.50.0.1 ── 10.50.0.2 node (VIP on lo, TUN) 10.40.0.1 ── 10.40.0.2 sink

The node runs the real data path (`cluster.node.datapath.Datapath`, the class `cluster-node`
runs) with one AES-128-GCM Child SA installed directly — no etcd, which the data path never
waits on anyway. The generator encrypts its packets *before* the clock starts (with the ESP
core as the client) and then only sends them, so it is not the bottleneck. Decrypted packets
leave the node's TUN and are routed to the sink, which drops them.

Reported: packets the node delivered to the sink per second of the node's own CPU time
(utime + stime from /proc, all threads: "per core", whatever else the shared machine does),
beside the same figure for strongSwan's kernel-libipsec as the gateway, measured in the same
run on the same topology: a charon responder (bench/libipsec.py) takes the node's place in
the node namespace, the project's IKE initiator brings a Child SA up with it from the
generator's namespace (PSK, aes128gcm16, UDP-encapsulated), and the generator seals its
packets with those keys and blasts them the same way. The sink counts what reaches it (an
nftables counter that also drops it), for both gateways. Beside both: the one-core
AES-128-GCM limit of `cryptography` (decrypt only), the node's outbound direction
(TUN → encrypt → UDP), and both directions again with a traffic policy on the SA
(`BENCH_POLICY`, a guest policy whose allowed range holds the bench's flow): the price of
per-packet filtering (cluster.policy). Wall-clock rates (first packet sent to the last one
delivered) are in the notes: charon is multi-threaded, so its wall rate may use more than one
core.

Each gateway gets BLASTS blasts of PACKETS packets on one SA (the sequence numbers go on from
blast to blast); the figures are sums over them. Both gateways drop what the generator sends
faster than they take it, at their UDP socket. The node asks for 4 MiB socket buffers; charon
keeps the default (208 KiB: strongSwan has no setting for it, and net.core.rmem_default cannot
be set inside a namespace), so it drops more and may wake up more often per packet.

The generator hands the kernel 40 ESP datagrams per send (UDP GSO, `--gso`), paced at
`--rate` packets/s. The veth carries such a send unsplit to the node, so the gateway's socket
sees what a real NIC's GRO makes of back-to-back datagrams of one flow: a socket with UDP_GRO
(the node) receives them several per call; one without (charon) gets them one by one, split
by the kernel. A veth on its own never coalesces (its NAPI, when enabled, runs right after
each single send on the sender's CPU), so without GSO here the bench would model a NIC without
GRO.

`python -m bench node` runs it (root). `python -m bench.node serve|generate|sink ...` are the
node and the generators it starts inside the namespaces.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench import Row

ROOT = Path(__file__).resolve().parent.parent
PACKET_BYTES = 1400
PACKETS = 200_000
BLASTS = 3  # per gateway, on one SA: more CPU time measured (the clock ticks at 10 ms)
SPI_IN, SPI_OUT = 0xBE000001, 0xBE000002
VIP = "203.0.113.10"
GEN, NODE_GEN, NODE_SINK, SINK = "10.50.0.1", "10.50.0.2", "10.40.0.1", "10.40.0.2"
CLIENT_VIP, SERVER = "10.99.0.7", "10.20.0.10"
KEY_IN = bytes(range(20))
KEY_OUT = bytes(range(20, 40))
SINK_PORT = 9  # the inbound packets' destination port: the sink's nftables counter drops them
GSO = 40  # ESP datagrams per generator send (UDP GSO), as a NIC's GRO would batch them
SOL_UDP, UDP_SEGMENT = 17, 103
RATE = 400_000  # packets/s the generator offers (paced): above what either gateway forwards
#: the policy of the policed runs: guest (the internal ranges as implicit denials) with the
#: protected network allowed and a few rules more, as an operator would write one
BENCH_POLICY: dict[str, Any] = {
    "mode": "guest", "allowed": ["10.20.0.0/24", "10.30.0.53/32 udp/53", "tcp/443"],
    "denied": ["10.20.0.99/32", "tcp/25", "198.51.100.0/24 udp/161-162"]}


def _inner(n: int, src: str, dst: str) -> bytes:
    """An IPv4/UDP packet of n bytes (the checksum left 0: nobody reads it)."""
    payload = bytes(n - 28)
    udp = struct.pack("!HHHH", 40000, SINK_PORT, 8 + len(payload), 0) + payload
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
def serve(stats_file: str, policed: bool = False) -> None:
    from cluster.esp import IvSource, SaCounters
    from cluster.node.datapath import Datapath
    from cluster.node.sa import NodeSa
    from cluster.node.tun import open_tun
    from cluster.policy import compile_policy
    tun = open_tun("ipsb0", 1500)
    subprocess.run(["ip", "route", "replace", f"{CLIENT_VIP}/32", "dev", "ipsb0"], check=True)
    dp = Datapath(vip=VIP, natt_port=4500, tun_fd=tun, raw_esp=False)
    sa = NodeSa(_record(), 4096, IvSource(b"\x00\x00\x00\x01"),
                compile_policy("bench", **BENCH_POLICY) if policed else None)
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
        "udp_receives": t.udp_receives, "coalesced": t.coalesced,
        "drops": {k.value: v for k, v in (dp.table.drops + dp.drops).items()},
        "policy_drops": sum(dp.policy_drops.values())}))


# -- inside the generator namespace ---------------------------------------------------------
def generate(count: int, sa_file: str | None = None, blast: int = 0, gso: int = GSO,
             rate: int = RATE) -> None:
    """Seal `count` packets (the node's bench SA, or the Child SA in `sa_file` that
    bench/libipsec established with charon), then send them as fast as the socket takes
    them. Prints what was sent, when the first packet left (wall clock, shared by every
    namespace) and how long sending took.

    Blast number `blast` of a series on one SA continues the sequence numbers where the
    previous one ended (the gateway's replay window would drop a restart) and draws its IVs
    under its own prefix (no (key, IV) pair twice)."""
    from cluster.esp import IvSource
    if sa_file is None:
        sa, src = _client_sa(), CLIENT_VIP
    else:
        from bench.libipsec import client_sa
        sa = client_sa(Path(sa_file))
        src = json.loads(Path(sa_file).read_text())["virtual_ip"] or CLIENT_VIP
    sa.out_seq = blast * count
    sa.iv_source = IvSource((0x10 + blast).to_bytes(4, "big"))
    inner = _inner(PACKET_BYTES, src, SERVER)
    packets = [sa.seal(inner, 0.0) for _ in range(count)]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    s.bind((GEN, 4500))
    dst = (VIP, 4500)
    sendmsg = s.sendmsg
    # several equal-sized datagrams per call (UDP GSO); the veth carries them as one
    # unsplit buffer (see the module docstring)
    segment = [(SOL_UDP, UDP_SEGMENT, struct.pack("H", len(packets[0])))] if gso > 1 else []
    batches = [b"".join(packets[i:i + gso]) for i in range(0, len(packets), max(gso, 1))]
    per = max(gso, 1)
    from bench import busy_seconds
    stat = Path("/proc/stat")
    busy0 = busy_seconds(stat.read_text())
    started = time.time()
    t0 = time.perf_counter()
    sent = 0
    clock = time.perf_counter
    for i, batch in enumerate(batches):
        try:
            sendmsg([batch], segment, 0, dst)
            sent += min(per, count - i * per)
        except OSError:  # ENOBUFS: the generator outran the link; the node cannot see it
            time.sleep(0)
        if rate and i % 16 == 15 and (ahead := sent / rate - (clock() - t0)) > 0:
            time.sleep(ahead)
    seconds = time.perf_counter() - t0
    # the whole machine's CPU while sending: on a veth the receiver's softirq work (the
    # gateway's kernel ESP) mostly runs on the sender's CPU, out of any process's account
    busy = busy_seconds(stat.read_text()) - busy0
    print(json.dumps({"sent": sent, "seconds": seconds, "started": started, "busy_s": busy}))


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
def _sh(*argv: str, input: str | None = None) -> None:
    r = subprocess.run(argv, capture_output=True, text=True, input=input)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:6])}: {(r.stderr or r.stdout).strip()[-300:]}")


def _delivered(prefix: str) -> int:
    """Packets the sink's nftables counter has seen (and dropped)."""
    r = subprocess.run(["ip", "netns", "exec", prefix + "sink", "nft", "list", "chain", "ip",
                        "bench", "delivered"], capture_output=True, text=True, check=True)
    m = re.search(r"counter packets (\d+)", r.stdout)
    if m is None:
        raise RuntimeError(f"no counter in the sink's nftables chain: {r.stdout[-200:]!r}")
    return int(m.group(1))


def _settled(prefix: str, quiet_s: float = 0.5, limit_s: float = 15.0) -> tuple[int, float]:
    """Wait until the sink's count stops moving; (count, wall time of its last change)."""
    count, changed = _delivered(prefix), time.time()
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and time.time() - changed < quiet_s:
        time.sleep(0.05)
        now = _delivered(prefix)
        if now != count:
            count, changed = now, time.time()
    return count, changed


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
    # the sink counts what reaches it and drops it before the UDP layer would answer with
    # ICMP (which would travel back through the gateway and cost it work)
    _sh("ip", "netns", "exec", sink, "nft", "-f", "-", input=(
        "table ip bench {\n chain delivered {\n"
        "  type filter hook prerouting priority -300; policy accept;\n"
        f"  ip daddr {SERVER} udp dport {SINK_PORT} counter drop\n }}\n}}\n"))
    _sh("ip", "netns", "exec", sink, "sysctl", "-q", "-w", "net.ipv4.icmp_ratelimit=1000000")
    _sh("ip", "-n", gen, "route", "add", f"{CLIENT_VIP}/32", "via", NODE_GEN)


def _cpu_seconds(pid: int) -> float:
    return sum(_cpu_split(pid))


def _cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


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


def _blast(prefix: str, pid: int, sa_file: Path | None, blast: int) -> dict[str, Any]:
    """Run the generator against the gateway whose process is `pid` and measure: packets the
    sink received, the gateway's CPU time (user, system) from before the generator starts
    until the sink's count settles, and the wall time from the first packet sent to the last
    one delivered."""
    argv = [sys.executable, "-m", "bench.node", "generate", "--count", str(PACKETS),
            "--blast", str(blast)]
    if sa_file is not None:
        argv += ["--sa", str(sa_file)]
    user0, sys0 = _cpu_split(pid)
    before = _delivered(prefix)
    gen = subprocess.run(["ip", "netns", "exec", prefix + "gen", *argv], capture_output=True,
                         text=True, cwd=ROOT, timeout=600)
    if gen.returncode != 0:
        raise RuntimeError(f"generator failed: {gen.stderr.strip()[-300:]}")
    after, last = _settled(prefix)
    user1, sys1 = _cpu_split(pid)
    g = json.loads(gen.stdout)
    user, system = user1 - user0, sys1 - sys0
    cpu = user + system
    delivered = after - before
    wall = last - g["started"]
    return {"delivered": delivered, "sent": g["sent"], "gen_seconds": g["seconds"],
            "cpu": cpu, "user": user, "system": system, "wall": wall,
            "per_core": delivered / cpu if cpu > 0 else 0.0,
            "wall_rate": delivered / wall if wall > 0 else 0.0}


def _series(prefix: str, pid: int, sa_file: Path | None = None) -> dict[str, Any]:
    """BLASTS blasts on one SA; sums over them, and the per-core rate of each."""
    blasts = [_blast(prefix, pid, sa_file, i) for i in range(BLASTS)]
    r: dict[str, Any] = {k: sum(b[k] for b in blasts)
                         for k in ("delivered", "sent", "gen_seconds", "cpu", "user", "system",
                                   "wall")}
    r["per_core"] = r["delivered"] / r["cpu"] if r["cpu"] > 0 else 0.0
    r["wall_rate"] = r["delivered"] / r["wall"] if r["wall"] > 0 else 0.0
    r["each"] = [b["per_core"] for b in blasts]
    return r


def _spread(r: dict[str, Any]) -> str:
    return "/".join(f"{x / 1000:.0f}" for x in r["each"]) + " k per blast"


def _direction(prefix: str, tmp: Path, outbound: bool, policed: bool = False) -> dict[str, Any]:
    py = sys.executable
    stats = tmp / (("out" if outbound else "in") + ("-policed" if policed else "") + ".json")
    node = subprocess.Popen(["ip", "netns", "exec", prefix + "node", py, "-m", "bench.node",
                             "serve", "--stats", str(stats)] + (["--policy"] if policed else []),
                            cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not Path(str(stats) + ".ready").exists():
            if node.poll() is not None or time.monotonic() > deadline:
                out = node.stdout.read() if node.poll() is not None and node.stdout else b""
                raise RuntimeError(f"bench node did not start: {out.decode(errors='replace')}")
            time.sleep(0.05)
        if outbound:
            user0, sys0 = _cpu_split(node.pid)
            argv = [py, "-m", "bench.node", "sink", "--count", str(PACKETS), "--seconds", "10"]
            gen = subprocess.run(["ip", "netns", "exec", prefix + "sink", *argv],
                                 capture_output=True, text=True, cwd=ROOT, check=True)
            time.sleep(0.5)  # let the node drain its TUN
            user1, sys1 = _cpu_split(node.pid)
            g = json.loads(gen.stdout)
            r: dict[str, Any] = {"sent": g["sent"], "gen_seconds": g["seconds"],
                                 "user": user1 - user0, "system": sys1 - sys0}
            r["cpu"] = r["user"] + r["system"]
        else:
            r = _series(prefix, node.pid)
        node.send_signal(signal.SIGTERM)
        node.wait(20)
        result = json.loads(stats.read_text())
        r["own_count"] = result["packets_out" if outbound else "packets_in"]
        r["receives"] = result.get("udp_receives", 0)
        if result.get("policy_drops"):
            raise RuntimeError(f"the bench policy dropped {result['policy_drops']} packets")
        if outbound:
            r["delivered"] = r["own_count"]
            r["per_core"] = r["own_count"] / r["cpu"] if r["cpu"] > 0 else 0.0
        return r
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()


def _libipsec(prefix: str, tmp: Path) -> dict[str, Any]:
    """The same inbound measurement with charon (kernel-libipsec) as the gateway in the node
    namespace; keys from the project's initiator (bench/libipsec.py)."""
    from bench import libipsec
    ns = prefix + "node"
    _sh("ip", "-n", ns, "addr", "add", f"{libipsec.LOCAL_INSIDE}/32", "dev", "lo")
    charon = libipsec.start_gateway(ns, tmp / "charon", VIP, CLIENT_VIP, "10.20.0.0/24")
    try:
        sa_file = tmp / "charon" / "child-sa.json"
        est = subprocess.run(["ip", "netns", "exec", prefix + "gen", sys.executable, "-m",
                              "bench.libipsec", "establish", "--local", GEN, "--vip", VIP,
                              "--out", str(sa_file)],
                             capture_output=True, text=True, cwd=ROOT, timeout=120)
        if est.returncode != 0:
            raise RuntimeError(f"no Child SA with charon: {est.stderr.strip()[-300:]}; "
                               f"charon log: {libipsec._tail(tmp / 'charon' / 'charon.log')}")
        r = _series(prefix, charon.pid, sa_file)
        r["own_count"] = libipsec.forwarded_by_charon(charon.pid)
        r["sa"] = json.loads(est.stdout)
        return r
    finally:
        libipsec.stop_gateway(charon)


def _note(r: dict[str, Any], who: str) -> str:
    """Counts, CPU and wall time of an inbound series, one line."""
    if r["cpu"] <= 0 or r["wall"] <= 0:
        return f"{who}: no measurable CPU or wall time ({r['delivered']:,} delivered)"
    return (f"{BLASTS} blasts: {r['delivered']:,} of {r['sent']:,} packets delivered ({who} "
            f"counted {r['own_count']:,} decrypted), {who} CPU {r['cpu']:.2f} s "
            f"({r['user'] / r['cpu']:.0%} user), {_spread(r)}; wall (first packet sent to "
            f"last delivered) {r['wall']:.1f} s: {r['wall_rate']:,.0f} packets/s, {who} busy "
            f"{r['cpu'] / r['wall']:.0%} of it")


def _gro(r: dict[str, Any]) -> str:
    """How many datagrams the node's socket got per receive call (UDP GRO)."""
    if not r.get("receives"):
        return ""
    return f"; {r['own_count'] / r['receives']:.1f} datagrams per receive call (UDP GRO)"


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
            policed_in = _direction(prefix, Path(tmp), outbound=False, policed=True)
            policed_out = _direction(prefix, Path(tmp), outbound=True, policed=True)
            try:
                ss: dict[str, Any] | None = _libipsec(prefix, Path(tmp))
                failure = ""
            except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as exc:
                ss, failure = None, str(exc)  # the node's figures still count
        finally:
            for ns in ("gen", "node", "sink"):
                subprocess.run(["ip", "netns", "delete", prefix + ns], capture_output=True)
    baseline = ss["per_core"] if ss is not None else None
    ratio = inbound["per_core"] / baseline if baseline else None
    rows.append({"metric": "AES-128-GCM decrypt, 1400 B, one core (cryptography)",
                 "value": limit, "unit": "packets/s", "note": "the crypto limit"})
    rows.append({
        "metric": "strongSwan kernel-libipsec receive → decrypt → TUN → sink, 1400 B, per core",
        "value": baseline if ss is not None else "failed", "unit": "packets/s",
        "note": ("charon as the gateway, same topology and generator; " + _note(ss, "charon")
                 if ss is not None else f"not measured: {failure}")})
    rows.append({
        "metric": "node receive → decrypt → TUN → sink, 1400 B, per core",
        "value": inbound["per_core"], "unit": "packets/s", "baseline": baseline,
        "baseline_name": "strongSwan kernel-libipsec, this run", "ratio": ratio,
        "goal": "≥ 10x libipsec",
        "note": (f"{inbound['per_core'] / limit:.1%} of the crypto limit; "
                 + _note(inbound, "node") + _gro(inbound))})
    rows.append({
        "metric": "node receive → decrypt → TUN → sink vs. the crypto limit",
        "value": inbound["per_core"], "unit": "packets/s", "baseline": limit,
        "baseline_name": "AES-128-GCM decrypt, cryptography", "ratio": inbound["per_core"] / limit,
        "goal": "≥ 25 % of the crypto limit", "note": "the same run as the row above"})
    rows.append({
        "metric": "node TUN → encrypt → send, 1400 B, per core", "value": outbound["per_core"],
        "unit": "packets/s", "baseline": limit,
        "baseline_name": "AES-128-GCM decrypt, cryptography",
        "ratio": outbound["per_core"] / limit,
        "note": (f"{outbound['delivered']:,} of {outbound['sent']:,} packets sent by the node, "
                 f"node CPU {outbound['cpu']:.2f} s ({outbound['user'] / outbound['cpu']:.0%} "
                 "user); not measured for libipsec" if outbound["cpu"] else "")})
    for label, base, policed in (("receive → decrypt → policy → TUN → sink", inbound, policed_in),
                                 ("TUN → policy → encrypt → send", outbound, policed_out)):
        rows.append({
            "metric": f"node {label}, 1400 B, per core, with a traffic policy",
            "value": policed["per_core"], "unit": "packets/s", "baseline": base["per_core"],
            "baseline_name": "the same without a policy, this run",
            "ratio": policed["per_core"] / base["per_core"] if base["per_core"] else None,
            "note": f"guest policy of {len(BENCH_POLICY['allowed'])} allowed and "
                    f"{len(BENCH_POLICY['denied'])} denied rules; {_note(policed, 'node')}"
                    if "each" in policed else "guest policy, outbound"})
    gen_pps = inbound["sent"] / inbound["gen_seconds"] if inbound["gen_seconds"] else 0.0
    rows.append({"metric": "generator send rate (pre-encrypted)", "value": gen_pps,
                 "unit": "packets/s", "note": "must exceed the gateways' rates"})
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.node")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--stats", required=True)
    s.add_argument("--policy", action="store_true", help="the SA carries BENCH_POLICY")
    g = sub.add_parser("generate")
    g.add_argument("--count", type=int, default=PACKETS)
    g.add_argument("--sa", help="a Child SA bench/libipsec established (default: the node's)")
    g.add_argument("--blast", type=int, default=0, help="number in a series on one SA")
    g.add_argument("--gso", type=int, default=GSO, help="datagrams per send (1: no GSO)")
    g.add_argument("--rate", type=int, default=RATE, help="packets/s offered (0: no pacing)")
    k = sub.add_parser("sink")
    k.add_argument("--count", type=int, default=PACKETS)
    k.add_argument("--seconds", type=float, default=10)
    args = p.parse_args(argv)
    if args.cmd == "serve":
        serve(args.stats, args.policy)
    elif args.cmd == "generate":
        generate(args.count, args.sa, args.blast, args.gso, args.rate)
    else:
        sink_outbound(args.count, args.seconds)


if __name__ == "__main__":
    main()
