"""Kernel data plane against strongSwan with kernel IPsec: receive → decrypt → forward,
1400-byte packets, in one VM boot (cluster.lab.vm: Debian's kernel, which has ESP).

This machine's kernel has no ESP, so everything runs inside the VM the kernel tier uses: the
host boots it once (`python -m bench node_kernel`), the guest runs `python -m
bench.node_kernel inside`, which prints its measurements as one JSON line, and the host turns
them into rows. Under TCG the guest's CPU is emulated (and shares the host's two cores with
whatever else runs there): the absolute rates say nothing about real hardware, only the ratio
between the two gateways measured in the same boot does.

The topology and the traffic generator are bench/node's (`_topology`, `python -m bench.node
generate`: ESP-in-UDP sealed with the project's ESP before the clock starts, 40 datagrams per
UDP GSO send, sequence numbers going on from blast to blast):

    gen 10.50.0.1 ── 10.50.0.2 gateway (VIP on lo) 10.40.0.1 ── 10.40.0.2 sink

Two gateways, each in its own copy of that topology (the same namespaces, addresses and
links), both with their ESP in their gateway namespace's XFRM, the same suite (AES-128-GCM
with ESN) and replay window (the node's default, 1024):

- the node: the project's kernel data plane (`cluster.node.kernel.KernelPlane` and its
  sockets, `cluster.node.kernel_io`, the classes `cluster-node` runs with `dataplane =
  kernel`) holding one Child SA as the owner — inbound and outbound states, its outbound
  policy, the XFRM interface the client's address is routed into, the UDP_ENCAP socket on
  VIP:4500, the aevents subscription, and a checkpoint read every T as the agent does — with
  the record installed directly, no etcd (which the data path never waits on);
- strongSwan: charon with kernel-netlink (no kernel-libipsec) as the responder
  (bench/libipsec.py's configuration, `encap = yes`), its Child SA brought up by the
  project's IKE initiator from the generator's namespace, whose keys the generator seals
  with.

Both stay up the whole run; BLASTS blasts of PACKETS packets go to each, alternating (node,
strongSwan, node, ...), so a change of the shared host's load falls on both alike. The sink's
nftables counter counts what is delivered. Reported per gateway, summed over its blasts:
- packets/s: delivered per second of the generator's sending — on a veth the receiving
  side's work (the gateway's kernel ESP, forwarding, the sink) runs in the sender's softirq,
  so the send loop's time holds it — the headline, and its ratio node/strongSwan, beside
  the ratio of each pair of blasts;
- packets per CPU-second of the whole VM while the generator sends (/proc/stat; that softirq
  work is out of any process's account, so no per-process figure would hold it).

`python -m bench.node_kernel serve` is the node inside the gateway namespace.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench import Row, Skipped

ROOT = Path(__file__).resolve().parent.parent
PACKETS = 20_000  # per blast: the guest seals about 6,000 packets/s under TCG
BLASTS = 8  # per gateway, on one SA, alternating with the other gateway's
ESP_PROPOSAL = "aes128gcm16-esn"  # the node's bench record: AES-128-GCM, ESN
RESULT = "BENCH-NODE-KERNEL "  # the guest's result line starts with this
VM_TIMEOUT_S = 1800
TCG_NOTE = ("under TCG the CPU is emulated: only the ratio between the two gateways, "
            "measured in the same boot, means anything")


# -- inside the gateway namespace: the node ------------------------------------------------
def serve(stats_file: str) -> None:
    """The kernel data plane with the bench's Child SA, owned and sending, until SIGTERM;
    then its own counters to `stats_file`."""
    from bench import node as bn
    from cluster.esp import SaCounters
    from cluster.node.config import NodeSection
    from cluster.node.counters import TakeOver, Traffic
    from cluster.node.events import SaStart
    from cluster.node.kernel import KernelPlane
    from cluster.node.kernel_io import KernelSockets, create_interface, remove_interface
    from cluster.node.kernel_sa import IF_ID
    c = NodeSection(id="bench", vip=bn.VIP, address=bn.NODE_GEN)
    create_interface("ipsk0", IF_ID, c.tun_mtu)
    subprocess.run(["ip", "route", "replace", f"{bn.CLIENT_VIP}/32", "dev", "ipsk0"],
                   check=True)
    plane = KernelPlane(vip=c.vip, natt_port=c.natt_port, replay_window=c.replay_window,
                        jump_packets=c.jump_packets, checkpoint_packets=c.checkpoint_packets,
                        checkpoint_ms=c.checkpoint_ms, fence_grace_s=c.fence_grace_ms / 1000)
    plane.start()
    io = KernelSockets(vip=c.vip, natt_port=c.natt_port, health=None,
                       health_reply=lambda _d: None, ike_port=None, on_ike=None,
                       on_aevents=plane.aevents)
    io.start()
    record = bn._record()
    spi = record.spi_in
    plane.install_sa(record, None, moved=False)
    plane.install_counters({spi: SaStart(TakeOver(SaCounters(0, 0, 0), False), Traffic())})
    plane.send_on({spi: 1 << 62})
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    checkpoints = 0
    Path(stats_file + ".ready").write_text("1")
    mark = (0, 0, 0)
    while not done.wait(c.checkpoint_ms / 1000):  # the agent's checkpoint reads, every T
        moved = plane.moved_counters({spi: mark}, set())
        if spi in moved:
            k = moved[spi][0]
            mark = (k.out_seq, k.in_highest, k.in_bitmap)
            checkpoints += 1
    _, traffic = plane.counters([spi])[spi]
    stats = {"packets_in": traffic.packets_in, "checkpoints": checkpoints,
             "kernel_errors": plane.stats.kernel_errors}
    io.stop()
    plane.close()
    remove_interface("ipsk0")
    Path(stats_file).write_text(json.dumps(stats))


# -- inside the VM: the orchestrator ----------------------------------------------------------
def _settled(prefix: str, quiet_s: float = 1.0, limit_s: float = 60.0) -> tuple[int, float]:
    """The sink's count once it stops moving, and the wall time of its last change (each
    read is a process: slow under TCG, so the quiet time is longer than bench/node's)."""
    from bench import node as bn
    count, changed = bn._delivered(prefix), time.time()
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and time.time() - changed < quiet_s:
        time.sleep(0.1)
        now = bn._delivered(prefix)
        if now != count:
            count, changed = now, time.time()
    return count, changed


def _blast(prefix: str, blast: int, sa_file: Path | None) -> dict[str, Any]:
    from bench import node as bn
    argv = [sys.executable, "-m", "bench.node", "generate", "--count", str(PACKETS),
            "--blast", str(blast), "--rate", "0"]
    if sa_file is not None:
        argv += ["--sa", str(sa_file)]
    before = bn._delivered(prefix)
    gen = subprocess.run(["ip", "netns", "exec", prefix + "gen", *argv], capture_output=True,
                         text=True, cwd=ROOT, timeout=600)
    if gen.returncode != 0:
        raise RuntimeError(f"generator failed: {gen.stderr.strip()[-300:]}")
    after, last = _settled(prefix)
    g = json.loads(gen.stdout)
    return {"delivered": after - before, "sent": g["sent"], "send_s": g["seconds"],
            "wall_s": max(last - g["started"], g["seconds"]), "busy_s": g["busy_s"]}


def _start_node(prefix: str, stats: Path) -> subprocess.Popen[bytes]:
    node = subprocess.Popen(["ip", "netns", "exec", prefix + "node", sys.executable, "-m",
                             "bench.node_kernel", "serve", "--stats", str(stats)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not Path(str(stats) + ".ready").exists():
        if node.poll() is not None or time.monotonic() > deadline:
            _stop(node)
            out = node.stdout.read() if node.stdout else b""
            raise RuntimeError(f"bench node did not start: {out.decode(errors='replace')}")
        time.sleep(0.1)
    return node


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _stop_node(node: subprocess.Popen[bytes], stats: Path) -> dict[str, Any]:
    """SIGTERM the node; its own counters."""
    node.send_signal(signal.SIGTERM)
    try:
        node.wait(60)
    finally:
        _stop(node)
    own: dict[str, Any] = json.loads(stats.read_text())
    if own["kernel_errors"]:
        raise RuntimeError(f"the node's kernel plane counted {own['kernel_errors']} refused "
                           "requests")
    return own


def _start_strongswan(prefix: str, work: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """charon (kernel-netlink) in the gateway namespace and its Child SA with the project's
    initiator; (charon, the file of the Child SA's keys)."""
    from bench import libipsec
    from bench import node as bn
    from cluster.node.config import NodeSection
    window = NodeSection(id="bench", vip=bn.VIP, address=bn.NODE_GEN).replay_window
    bn._sh("ip", "-n", prefix + "node", "addr", "add", f"{libipsec.LOCAL_INSIDE}/32", "dev",
           "lo")
    charon = libipsec.start_gateway(prefix + "node", work, bn.VIP, bn.CLIENT_VIP,
                                    "10.20.0.0/24", kernel_ipsec=True,
                                    esp_proposal=ESP_PROPOSAL, replay_window=window)
    try:
        sa_file = work / "child-sa.json"
        est = subprocess.run(["ip", "netns", "exec", prefix + "gen", sys.executable, "-m",
                              "bench.libipsec", "establish", "--local", bn.GEN, "--vip",
                              bn.VIP, "--out", str(sa_file), "--esp", ESP_PROPOSAL],
                             capture_output=True, text=True, cwd=ROOT, timeout=600)
        if est.returncode != 0:
            raise RuntimeError(f"no Child SA with charon: {est.stderr.strip()[-300:]}; "
                               f"charon log: {libipsec._tail(work / 'charon.log')}")
        if not json.loads(est.stdout)["esn"]:
            raise RuntimeError("charon's Child SA has no ESN: not the node's suite")
    except BaseException:
        libipsec.stop_gateway(charon)
        raise
    return charon, sa_file


def _vm() -> dict[str, str]:
    from bench import machine
    accel = "TCG" if "TCG" in machine() else "unknown accelerator"
    return {"machine": machine(), "accel": accel, "kernel": os.uname().release}


def inside() -> dict[str, Any]:
    """Both gateways up, each in its own copy of the topology, blasts alternating between
    them; what `rows` reads."""
    import tempfile

    from bench import libipsec
    from bench import node as bn
    subprocess.run(["modprobe", "-a", "xfrm_user", "esp4", "xfrm_interface"], check=True)
    tag = uuid.uuid4().hex[:4]
    kp, sp = f"bk{tag}n-", f"bk{tag}s-"  # the node's topology, strongSwan's
    node_blasts: list[dict[str, Any]] = []
    swan_blasts: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        stats = Path(tmp) / "node.json"
        node = charon = None
        try:
            bn._topology(kp)
            bn._topology(sp)
            node = _start_node(kp, stats)
            charon, sa_file = _start_strongswan(sp, Path(tmp) / "charon")
            for i in range(BLASTS):
                node_blasts.append(_blast(kp, i, None))
                swan_blasts.append(_blast(sp, i, sa_file))
            swan_own = libipsec.forwarded_by_charon(charon.pid)
            own = _stop_node(node, stats)
        finally:
            if node is not None:
                _stop(node)
            if charon is not None:
                libipsec.stop_gateway(charon)
            for ns in ("gen", "node", "sink"):
                for prefix in (kp, sp):
                    subprocess.run(["ip", "netns", "delete", prefix + ns], capture_output=True)
    return {"vm": _vm(), "packets": PACKETS, "packet_bytes": bn.PACKET_BYTES,
            "esp_proposal": ESP_PROPOSAL,
            "node": {"blasts": node_blasts, "own_count": own["packets_in"],
                     "checkpoints": own["checkpoints"]},
            "strongswan": {"blasts": swan_blasts, "own_count": swan_own}}


# -- the report (pure: tests/unit) ----------------------------------------------------------
def parse_result(console: str) -> dict[str, Any]:
    """The guest's result line from the VM's console output. ValueError when there is none
    (the end of the console is in the message)."""
    for line in reversed(console.splitlines()):
        if line.startswith(RESULT):
            data: dict[str, Any] = json.loads(line[len(RESULT):])
            return data
    tail = " | ".join(console.strip().splitlines()[-6:])
    raise ValueError(f"no result from the VM: {tail[-600:]}")


def rate(b: dict[str, Any]) -> float:
    """Packets/s of a blast: delivered per second of the generator's sending (on a veth the
    gateway's receive work runs in the sender's softirq, so it is inside that time)."""
    return b["delivered"] / b["send_s"] if b["send_s"] > 0 else 0.0


def summary(g: dict[str, Any]) -> dict[str, Any]:
    """Sums over a gateway's blasts, its rates, and the rate of each blast."""
    blasts = g["blasts"]
    s: dict[str, Any] = {k: sum(b[k] for b in blasts)
                         for k in ("delivered", "sent", "send_s", "wall_s", "busy_s")}
    s["own_count"] = g["own_count"]
    s["pps"] = s["delivered"] / s["send_s"] if s["send_s"] > 0 else 0.0
    s["per_cpu"] = s["delivered"] / s["busy_s"] if s["busy_s"] > 0 else 0.0
    s["each"] = [rate(b) for b in blasts]
    return s


def pair_ratios(node: dict[str, Any], swan: dict[str, Any]) -> list[float]:
    """node/strongSwan of each pair of blasts run one after the other."""
    return [a / b for a, b in zip(node["each"], swan["each"], strict=False) if b > 0]


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def _note(s: dict[str, Any], who: str) -> str:
    each = "/".join(f"{x:,.0f}" for x in s["each"])
    return (f"{len(s['each'])} blasts: {s['delivered']:,} of {s['sent']:,} packets delivered "
            f"({who} counted {s['own_count']:,} decrypted) in {s['send_s']:.1f} s of sending "
            f"({s['wall_s']:.1f} s to the sink's last count read); per blast {each} packets/s")


def rows(result: dict[str, Any]) -> list[Row]:
    """The benchmark's rows from the guest's result."""
    node, swan = summary(result["node"]), summary(result["strongswan"])
    vm = result["vm"]
    size = result["packet_bytes"]
    pairs = pair_ratios(node, swan)
    base = "strongSwan kernel IPsec, this VM boot"
    return [
        {"metric": "where every figure below was measured", "value": vm["accel"], "unit": "",
         "note": f"{vm['machine']}; {TCG_NOTE}" if vm["accel"] == "TCG" else vm["machine"]},
        {"metric": f"strongSwan (charon, kernel-netlink) receive → decrypt (XFRM) → sink, "
                   f"{size} B", "value": swan["pps"], "unit": "packets/s",
         "note": f"{result['esp_proposal']}, ESP in UDP; " + _note(swan, "charon")},
        {"metric": f"node, kernel data plane, receive → decrypt (XFRM) → sink, {size} B",
         "value": node["pps"], "unit": "packets/s", "baseline": swan["pps"],
         "baseline_name": base, "ratio": _ratio(node["pps"], swan["pps"]), "goal": "≥ 0.9x",
         "note": ("same VM, topology and generator, blasts alternating with strongSwan's; "
                  + _note(node, "node")
                  + (f"; node/strongSwan per pair of blasts {min(pairs):.2f}..{max(pairs):.2f}"
                     f", median {statistics.median(pairs):.2f}" if pairs else ""))},
        {"metric": "node vs strongSwan, packets per VM CPU-second while sending",
         "value": node["per_cpu"], "unit": "packets/CPU-s", "baseline": swan["per_cpu"],
         "baseline_name": base, "ratio": _ratio(node["per_cpu"], swan["per_cpu"]),
         "note": (f"whole-VM busy time (/proc/stat) during the generator's sends: node "
                  f"{node['busy_s']:.1f} s, charon {swan['busy_s']:.1f} s (the generator's own "
                  "send work is in both)")},
    ]


# -- on the host --------------------------------------------------------------------------------
def run() -> list[Row]:
    from cluster.lab import vm
    if os.geteuid() != 0:
        raise Skipped("needs root (network namespaces, the VM)")
    why = vm.missing()
    if why is not None:
        raise Skipped(f"no VM with a kernel that has ESP: {why}")
    command = f"{sys.executable} -m bench.node_kernel inside"
    result = vm.run(command, cwd=ROOT, timeout_s=VM_TIMEOUT_S)
    if result.returncode != 0:
        tail = " | ".join(result.output.strip().splitlines()[-8:])
        raise RuntimeError(f"the VM run failed (exit {result.returncode}): {tail[-800:]}")
    return rows(parse_result(result.output))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.node_kernel")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="the node, in the gateway namespace")
    s.add_argument("--stats", required=True)
    sub.add_parser("inside", help="the whole measurement, inside the VM")
    args = p.parse_args(argv)
    if args.cmd == "serve":
        serve(args.stats)
        return 0
    try:
        out = inside()
    except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as exc:
        print(f"node_kernel failed in the VM: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(RESULT + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
