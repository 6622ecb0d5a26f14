"""keyd against strongSwan's charon as a responder, on this machine, in the same run.

(a) Establishment latency: a real strongSwan client (`swanctl --initiate`: IKE_SA_INIT,
    IKE_AUTH and the first Child SA, PSK, x25519, AES-GCM) against keyd in a lab cluster and
    against a charon responder in a baseline lab (`--gateway strongswan`), N connects each
    (terminated in between). Median and p90; ratio keyd / charon (goal ≤ 1.5). The same
    with an EAP-MSCHAPv2 client (`auth = eap-mschapv2`, as Windows: IKE identity its
    address, the user name in EAP-Identity; gateway by certificate): keyd's lab-eap
    connection against charon's (`remote { auth = eap-mschapv2; eap_id = %any }`) — three
    IKE_AUTH round trips more than PSK, each persisted by keyd before it answers.
(b) Handshakes per second per core: the project's own initiator (keyd.ike over UDP) runs
    handshakes against each responder in turn — PARALLEL clients at once, each in a bare
    client namespace of its own and each back to back, as a gateway sees many clients —
    each handshake followed by its DELETE so neither side piles up SAs. The responder's CPU time
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
LATENCY_CONNECTS = 30
HANDSHAKES = 400
HANDSHAKES_ONE = 150   # the same with one client at a time
PARALLEL = 8   # clients handshaking at once, each back to back
IKE_PROPOSAL = "aes128gcm16-prfsha256-x25519"
ESP_PROPOSAL = "aes128gcm16"


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def _labs(tag: str) -> Iterator[dict[str, Any]]:
    """A baseline lab (charon at the VIP) and a cluster lab (keyd), both up at once."""
    from cluster.lab.lab import Lab
    labs: dict[str, Any] = {}
    try:
        labs["strongswan"] = Lab.up(name=f"{tag}ss", nodes=0, keyd=1, gateway="strongswan")
        labs["cluster"] = Lab.up(name=f"{tag}cl", nodes=1, keyd=1, gateway="cluster")
        yield labs
    finally:
        for lab in labs.values():
            lab.down()


def _connect_once(lab: Any, pid: int) -> float:
    from cluster.lab import strongswan
    strongswan.swanctl(pid, "--terminate", "--ike", "lab", "--timeout", "10", check=False)
    time.sleep(0.2)
    start = time.perf_counter()
    strongswan.initiate(pid)
    return time.perf_counter() - start


def _charon_sends_its_certificate(lab: Any) -> None:
    """The project's initiator sends no CERTREQ, and charon sends its certificate only when
    asked: add a connection for the load generator's identities that always sends it (keyd
    always does), so both responders do the same work (ECDSA AUTH + CERT, PSK from the
    client)."""
    from cluster.lab import addresses as A
    from cluster.lab import strongswan
    conf_dir = lab.dir / "gateway"
    text = (conf_dir / "swanctl.conf").read_text()
    bench_conn = f"""connections {{
  bench {{
    version = 2
    local_addrs = {A.VIP}
    mobike = no
    pools = lab-pool
    proposals = {IKE_PROPOSAL}
    send_cert = always
    local {{
      auth = pubkey
      certs = {lab.pki.cert("gateway")}
      id = {A.GATEWAY_ID}
    }}
    remote {{
      auth = psk
      id = *@bench.example
    }}
    children {{
      lab {{
        local_ts = {A.PROTECTED_NETWORK}
        esp_proposals = {ESP_PROPOSAL}
      }}
    }}
  }}
"""
    path = conf_dir / "swanctl-bench.conf"
    path.write_text(text.replace("connections {\n", bench_conn, 1))
    path.chmod(0o600)
    strongswan.load(int(lab.state.processes["gateway"].pid), path)


def _keyd_metrics(lab: Any) -> dict[str, float]:
    """keyd's step and etcd write metrics (samples by name with labels)."""
    code = ("import urllib.request;print(urllib.request.urlopen("
            "'http://127.0.0.1:9410/metrics', timeout=5).read().decode())")
    r = lab.run("keyd-1", [sys.executable, "-c", code], timeout_s=30)
    sums: dict[str, float] = {}
    for line in r.stdout.splitlines():
        if line.startswith(("keyd_step_seconds_", "keyd_etcd_write_seconds_")):
            name, value = line.rsplit(" ", 1)
            sums[name] = float(value)
    return sums


def _keyd_transactions(lab: Any) -> float:
    """etcd transactions keyd has written so far (every kind of write)."""
    return sum(v for k, v in _keyd_metrics(lab).items()
               if k.startswith("keyd_etcd_write_seconds_count"))


def _keyd_means(lab: Any, since: dict[str, float] | None = None) -> dict[str, float]:
    """Mean seconds per step and per etcd write, from keyd's own metrics (those added
    after the `since` snapshot of `_keyd_metrics`, when given); "auth_steps" is the number
    of IKE_AUTH steps per IKE_SA_INIT (1 with PSK; 5 with EAP-MSCHAPv2)."""
    now = _keyd_metrics(lab)
    sums = {k: v - (since or {}).get(k, 0.0) for k, v in now.items()}
    out = {}
    for key, label in (("init", 'exchange="IKE_SA_INIT"'), ("auth", 'exchange="IKE_AUTH"'),
                       ("etcd", 'record="ike_sa+child_sa"'), ("etcd_init", 'record="ike_sa"')):
        base = "keyd_step_seconds" if not key.startswith("etcd") else "keyd_etcd_write_seconds"
        n = sums.get(f"{base}_count{{{label}}}", 0.0)
        out[key] = sums.get(f"{base}_sum{{{label}}}", 0.0) / n if n else 0.0
        out[f"{key}_count"] = n
    out["auth_steps"] = out["auth_count"] / out["init_count"] if out["init_count"] else 0.0
    return out


def _latencies(labs: dict[str, Any], client: str, count: int, **options: Any) -> dict[str, Any]:
    """`count` connects of a strongSwan client named `client` (added to each lab with
    `options`) to each gateway, interleaved (the machine's noise hits both): median and
    p90 seconds per gateway, and keyd's means over these connects."""
    before = _keyd_metrics(labs["cluster"])
    times: dict[str, list[float]] = {g: [] for g in labs}
    pids = {}
    for gateway, lab in labs.items():
        lab.add_client(client, ike_proposal=IKE_PROPOSAL, esp_proposal=ESP_PROPOSAL, **options)
        pids[gateway] = lab.client_pid(client)
    for _ in range(count):
        for gateway, lab in labs.items():
            times[gateway].append(_connect_once(lab, pids[gateway]))
    for lab in labs.values():   # its SAs would sit beside the load generators'
        lab.remove_client(client)
    out: dict[str, Any] = {g: {"median_s": statistics.median(t), "p90_s": percentile(t, 90)}
                           for g, t in times.items()}
    out["means"] = _keyd_means(labs["cluster"], before)
    return out


def _handshake_rate(lab: Any, gateway: str, count: int,
                    parallel: int = PARALLEL) -> dict[str, float]:
    """`parallel` clients (each in its own namespace, with its own address) run
    `count / parallel` handshakes back to back each, all at once."""
    from cluster.lab import addresses as A
    recs = []
    for n in range(parallel):
        name = f"load{n}"
        if name not in lab.state.clients:
            lab.add_client(name, ike=False)
        recs.append(lab.state.clients[name])
    role = "keyd-1" if gateway == "cluster" else "gateway"
    responder = int(lab.state.processes[role].pid)
    etcd = int(lab.state.processes["etcd"].pid)
    each = [count // parallel + (1 if n < count % parallel else 0) for n in range(parallel)]
    txns0 = _keyd_transactions(lab) if gateway == "cluster" else 0.0
    cpu0, etcd0 = cpu_seconds(responder), cpu_seconds(etcd)
    start = time.perf_counter()
    procs = [subprocess.Popen(
        ["ip", "netns", "exec", rec.netns, sys.executable, "-m", "bench.keyd", "initiate",
         "--local", rec.address, "--target", A.VIP, f"--psk={lab.pki.psk()}",
         "--gateway-id", A.GATEWAY_ID, "--ca", str(lab.pki.ca_cert), "--count", str(n),
         "--prefix", f"load{i}-"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        for i, (rec, n) in enumerate(zip(recs, each, strict=True))]
    ok = failed = 0
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"load generator failed: {stderr.strip()[-500:]}")
        done = json.loads(stdout.strip().splitlines()[-1])
        ok += done["ok"]
        failed += done["failed"]
    wall = time.perf_counter() - start
    cpu = cpu_seconds(responder) - cpu0
    etcd_cpu = cpu_seconds(etcd) - etcd0
    if gateway == "cluster":
        time.sleep(0.3)   # the last DELETEs' removals ride on a timer
    txns = _keyd_transactions(lab) - txns0 if gateway == "cluster" else 0.0
    return {"ok": ok, "failed": failed, "wall_s": wall, "cpu_s": cpu,
            "etcd_cpu_s": etcd_cpu, "txns_per": txns / ok if ok else 0.0,
            "per_core": ok / cpu if cpu > 0 else 0.0}


def _latency_row(client: str, baseline_name: str, k: dict[str, Any], c: dict[str, Any],
                 what: str) -> dict[str, Any]:
    """One establishment-latency row: keyd's median against charon's, same run."""
    return {"metric": f"establishment latency, {client} → keyd (median)",
            "value": round(k["median_s"] * 1000, 1), "unit": "ms",
            "baseline": round(c["median_s"] * 1000, 1), "baseline_name": baseline_name,
            "ratio": round(k["median_s"] / c["median_s"], 2), "goal": "≤ 1.5x",
            "note": f"p90 {k['p90_s'] * 1000:.1f} vs {c['p90_s'] * 1000:.1f} ms; "
                    f"{LATENCY_CONNECTS} connects each, interleaved; {what}"}



def run() -> list[Row]:
    if os.geteuid() != 0:
        raise SystemExit("bench keyd needs root (network namespaces)")
    tag = f"bk{os.getpid() % 1000}"
    with _labs(tag) as labs:
        psk = _latencies(labs, "lat", LATENCY_CONNECTS)
        eap = _latencies(labs, "eap", LATENCY_CONNECTS, auth="eap-mschapv2")
        _charon_sends_its_certificate(labs["strongswan"])
        rates = {g: _handshake_rate(lab, g, HANDSHAKES) for g, lab in labs.items()}
        one = {g: _handshake_rate(lab, g, HANDSHAKES_ONE, parallel=1)
               for g, lab in labs.items()}
    c = {**psk["strongswan"], **rates["strongswan"]}
    k = {**psk["cluster"], **rates["cluster"]}
    means = psk["means"]
    ec, ek, em = eap["strongswan"], eap["cluster"], eap["means"]
    eap_writes = em["etcd_init_count"] / em["init_count"] if em["init_count"] else 0.0
    with_etcd = k["ok"] / max(k["cpu_s"] + k["etcd_cpu_s"], 1e-9)
    return [
        _latency_row(
            "strongSwan client", "→ charon", k, c,
            f"{IKE_PROPOSAL}/{ESP_PROPOSAL}, PSK client, ECDSA gateway. Inside keyd "
            f"(mean): IKE_SA_INIT {means['init'] * 1000:.1f} ms (etcd "
            f"{means['etcd_init'] * 1000:.1f} ms), IKE_AUTH "
            f"{means['auth'] * 1000:.1f} ms of which the etcd transaction "
            f"{means['etcd'] * 1000:.1f} ms (IKE SA, Child SA, lease, owner written "
            "before the answer)"),
        _latency_row(
            "EAP-MSCHAPv2 client", "→ charon eap-mschapv2", ek, ec,
            f"{IKE_PROPOSAL}/{ESP_PROPOSAL}; client as Windows (IDi its address, "
            "EAP-Identity, MSCHAPv2, gateway by ECDSA certificate); keyd's passwords from its "
            f"secrets file, charon's from swanctl.conf. Inside keyd (mean): "
            f"{em['auth_steps']:.1f} IKE_AUTH steps per connect, {em['auth'] * 1000:.1f} ms "
            "each to its answer; each EAP round's answer leaves before its IKE SA write, "
            f"which follows at once ({eap_writes:.1f} writes per connect, "
            f"{em['etcd_init'] * 1000:.1f} ms each, the client's next round waits for it), "
            "the last round writes the IKE SA, Child SA, lease and owner before its answer "
            f"({em['etcd'] * 1000:.1f} ms)"),
        {"metric": "handshakes per second per core, project initiator → keyd",
         "value": round(k["per_core"], 1), "unit": "handshakes/s/core",
         "baseline": round(c["per_core"], 1), "baseline_name": "→ charon",
         "ratio": round(k["per_core"] / c["per_core"], 2) if c["per_core"] else None,
         "goal": "≥ 0.5x",
         "note": f"{PARALLEL} clients at once; "
                 f"{k['ok']}/{c['ok']} handshakes (+DELETE) in {k['wall_s']:.1f}/"
                 f"{c['wall_s']:.1f} s wall; keyd {k['cpu_s']:.2f} s CPU + etcd "
                 f"{k['etcd_cpu_s']:.2f} s ({with_etcd:.1f}/s/core with etcd); "
                 f"{k['txns_per']:.2f} etcd transactions per handshake; charon "
                 f"{c['cpu_s']:.2f} s CPU; failed {k['failed']}/{c['failed']}"},
        {"metric": "handshakes per second per core, one client at a time",
         "value": round(one["cluster"]["per_core"], 1), "unit": "handshakes/s/core",
         "baseline": round(one["strongswan"]["per_core"], 1), "baseline_name": "→ charon",
         "ratio": round(one["cluster"]["per_core"] / one["strongswan"]["per_core"], 2)
         if one["strongswan"]["per_core"] else None,
         "goal": "(information)",
         "note": f"{one['cluster']['ok']}/{one['strongswan']['ok']} handshakes (+DELETE) back "
                 f"to back; keyd {one['cluster']['cpu_s']:.2f} s CPU, charon "
                 f"{one['strongswan']['cpu_s']:.2f} s; "
                 f"{one['cluster']['txns_per']:.2f} etcd transactions per handshake (a "
                 "DELETE's removals ride with the next IKE_AUTH)"},
    ]


# -- the load generator ---------------------------------------------------------------------

def run_handshakes(local_ip: str, target: str, psk: bytes, gateway_id: str, ca_file: str,
                   count: int, prefix: str = "load-") -> tuple[int, int]:
    """`count` handshakes one after another, each deleted again; (ok, failed)."""
    from cryptography import x509

    from keyd.client import ExchangeTimeout, IkeClient
    cas = tuple(x509.load_pem_x509_certificates(Path(ca_file).read_bytes()))
    ok = failed = 0
    for i in range(count):
        with IkeClient.psk(psk, f"{prefix}{i}@bench.example", gateway_id, local_ip,
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
    p.add_argument("--prefix", default="load-", help="identities are <prefix><n>@bench.example")
    args = parser.parse_args(argv)
    ok, failed = run_handshakes(args.local, args.target, args.psk.encode(), args.gateway_id,
                                args.ca, args.count, args.prefix)
    print(json.dumps({"ok": ok, "failed": failed}))


if __name__ == "__main__":
    main()
