"""keyd against strongSwan's charon as a responder, on this machine, in the same run.

(a) Establishment latency: a real strongSwan client (`swanctl --initiate`: IKE_SA_INIT,
    IKE_AUTH and the first Child SA, PSK, x25519, AES-GCM) against keyd in a lab cluster and
    against a charon responder in a baseline lab (`--gateway strongswan`), N connects each
    (terminated in between). Median and p90; ratio keyd / charon (goal ≤ 1.5).
(b) Handshakes per second per core: the project's own initiator (keyd.ike over UDP, from a
    bare client namespace) runs handshakes back to back against each responder in turn,
    each followed by its DELETE so neither side piles up SAs. The responder's CPU time
    (utime + stime from /proc) divides the count, so the figure is per core whatever else
    the shared machine does. keyd writes every handshake to etcd: etcd's CPU is reported
    beside it. Ratio keyd / charon (goal ≥ 0.5).

`python -m bench keyd` runs it (root: network namespaces). `python -m bench.keyd initiate …`
is the load generator (b) starts inside the client namespace.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import Row, percentile

ROOT = Path(__file__).resolve().parent.parent
LATENCY_CONNECTS = 15
HANDSHAKES = 150
IKE_PROPOSAL = "aes128gcm16-prfsha256-x25519"
ESP_PROPOSAL = "aes128gcm16"


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def _lab(name: str, gateway: str) -> Iterator[Any]:
    from cluster.lab.lab import Lab
    lab = Lab.up(name=name, nodes=1 if gateway == "cluster" else 0, keyd=1, gateway=gateway)
    try:
        yield lab
    finally:
        lab.down()


def _connect_times(lab: Any, client: str, n: int) -> list[float]:
    """Seconds per `swanctl --initiate`; the client terminates its IKE SA in between."""
    from cluster.lab import strongswan
    pid = lab._client_pid(client)
    times = []
    for _ in range(n):
        strongswan.swanctl(pid, "--terminate", "--ike", "lab", "--timeout", "10", check=False)
        time.sleep(0.3)
        start = time.perf_counter()
        strongswan.initiate(pid)
        times.append(time.perf_counter() - start)
    return times


def _handshake_rate(lab: Any, gateway: str, count: int) -> dict[str, float]:
    from cluster.lab import addresses as A
    lab.add_client("load", ike=False)
    rec = lab.state.clients["load"]
    role = "keyd-1" if gateway == "cluster" else "gateway"
    responder = int(lab.state.processes[role].pid)
    etcd = int(lab.state.processes["etcd"].pid)
    cpu0, etcd0 = cpu_seconds(responder), cpu_seconds(etcd)
    start = time.perf_counter()
    out = subprocess.run(
        ["ip", "netns", "exec", rec.netns, sys.executable, "-m", "bench.keyd", "initiate",
         "--local", rec.address, "--target", A.VIP, "--psk", lab.pki.psk(),
         "--gateway-id", A.GATEWAY_ID, "--ca", str(lab.pki.ca_cert), "--count", str(count)],
        capture_output=True, text=True, timeout=900, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr.strip()[-500:]}")
    wall = time.perf_counter() - start
    done = json.loads(out.stdout.strip().splitlines()[-1])
    cpu = cpu_seconds(responder) - cpu0
    return {"ok": done["ok"], "failed": done["failed"], "wall_s": wall, "cpu_s": cpu,
            "etcd_cpu_s": cpu_seconds(etcd) - etcd0,
            "per_core": done["ok"] / cpu if cpu > 0 else 0.0}


def measure(gateway: str, tag: str) -> dict[str, Any]:
    with _lab(f"{tag}{gateway[:2]}", gateway) as lab:
        lab.add_client("lat", ike_proposal=IKE_PROPOSAL, esp_proposal=ESP_PROPOSAL)
        times = _connect_times(lab, "lat", LATENCY_CONNECTS)
        rate = _handshake_rate(lab, gateway, HANDSHAKES)
    return {"median_s": statistics.median(times), "p90_s": percentile(times, 90), **rate}


def run() -> list[Row]:
    if os.geteuid() != 0:
        raise SystemExit("bench keyd needs root (network namespaces)")
    tag = f"bk{os.getpid() % 1000}"
    c = measure("strongswan", tag)
    k = measure("cluster", tag)
    with_etcd = k["ok"] / max(k["cpu_s"] + k["etcd_cpu_s"], 1e-9)
    return [
        {"metric": "establishment latency, strongSwan client → keyd (median)",
         "value": round(k["median_s"] * 1000, 1), "unit": "ms",
         "baseline": round(c["median_s"] * 1000, 1), "baseline_name": "→ charon",
         "ratio": round(k["median_s"] / c["median_s"], 2), "goal": "≤ 1.5x",
         "note": f"p90 {k['p90_s'] * 1000:.1f} vs {c['p90_s'] * 1000:.1f} ms; "
                 f"{LATENCY_CONNECTS} connects each, {IKE_PROPOSAL}/{ESP_PROPOSAL}, PSK"},
        {"metric": "handshakes per second per core, project initiator → keyd",
         "value": round(k["per_core"], 1), "unit": "handshakes/s/core",
         "baseline": round(c["per_core"], 1), "baseline_name": "→ charon",
         "ratio": round(k["per_core"] / c["per_core"], 2) if c["per_core"] else None,
         "goal": "≥ 0.5x",
         "note": f"{k['ok']}/{c['ok']} handshakes (+DELETE) in {k['wall_s']:.1f}/"
                 f"{c['wall_s']:.1f} s wall; keyd {k['cpu_s']:.2f} s CPU + etcd "
                 f"{k['etcd_cpu_s']:.2f} s ({with_etcd:.1f}/s/core with etcd); charon "
                 f"{c['cpu_s']:.2f} s CPU; failed {k['failed']}/{c['failed']}"},
    ]


# -- the load generator ---------------------------------------------------------------------

def run_handshakes(local_ip: str, target: str, psk: bytes, gateway_id: str, ca_file: str,
                   count: int) -> tuple[int, int]:
    """`count` handshakes one after another, each deleted again; (ok, failed)."""
    from cryptography import x509

    from keyd.client import ExchangeTimeout, IkeClient
    cas = tuple(x509.load_pem_x509_certificates(Path(ca_file).read_bytes()))
    ok = failed = 0
    for i in range(count):
        with IkeClient.psk(psk, f"load-{i}@bench.example", gateway_id, local_ip,
                           (target, 500), 4500, IKE_PROPOSAL, ESP_PROPOSAL, cas) as client:
            try:
                client.connect(timeout_s=20)
                client.delete(timeout_s=20)
                ok += 1
            except ExchangeTimeout:
                failed += 1
    return ok, failed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.keyd")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("initiate", help="IKEv2 handshakes with the project's initiator")
    p.add_argument("--local", required=True, help="our address")
    p.add_argument("--target", required=True, help="the responder (VIP)")
    p.add_argument("--psk", required=True)
    p.add_argument("--gateway-id", required=True)
    p.add_argument("--ca", required=True, help="CA of the gateway's certificate (PEM)")
    p.add_argument("--count", type=int, default=HANDSHAKES)
    args = parser.parse_args(argv)
    ok, failed = run_handshakes(args.local, args.target, args.psk.encode(), args.gateway_id,
                                args.ca, args.count)
    print(json.dumps({"ok": ok, "failed": failed}))


if __name__ == "__main__":
    main()
