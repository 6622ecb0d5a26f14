"""Study 6: secrets. A lab (cluster/lab: real etcd, keyd, two cluster-node agents, the sprayer
and cluster-hooks with a hook that records every payload it is given) carries clients made by
the project's IKE initiator (bench/esp_client.py) that ping the protected server in ESP; one
node is drained and undrained meanwhile (a planned hand-off of its clients), and clusterctl
watches the keyspace throughout. Then every place an operator or an attacker on the etcd side
could look is searched for the key bytes of every IKE SA and Child SA of the run (the
initiator holds the same keys as the cluster), the cluster data key and the PSK: every etcd
value, every log line of every component, the output of every clusterctl read command in
`-o json` and as tables, and every hook payload (stdin and environment)."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import secrets as tokens
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography import x509

from soak.budget import Budget

METHOD = (
    "A lab with one keyd, two nodes, the sprayer and cluster-hooks; clients made by the "
    "project's IKE initiator (PSK, AES-GCM) ping the protected server in ESP while one node "
    "is drained and undrained and `clusterctl watch -o json` runs. Each secret is sought as "
    "raw bytes, hex (lower, upper, colon-separated) and base64 (standard and URL-safe, at the "
    "three byte alignments), whole and as its first 16 bytes (an AEAD key without its salt).")

_HOOK = """#!/bin/sh
# soak: record every payload cluster-hooks gives a hook (stdin and environment)
{ echo "== event $1"; cat; echo; env; } >> "%s"
"""


def forms(secret: bytes) -> dict[str, bytes]:
    """Every encoding under which `secret` is sought."""
    out: dict[str, bytes] = {}
    for part_name, part in (("", secret), (" first 16 bytes", secret[:16])):
        if len(part) < 16 or (part_name and len(secret) <= 16):
            continue
        out[f"raw{part_name}"] = part
        out[f"hex{part_name}"] = part.hex().encode()
        out[f"HEX{part_name}"] = part.hex().upper().encode()
        out[f"hex:{part_name}"] = part.hex(":").encode()
        for shift in range(3):
            chunk = part[shift:]
            chunk = chunk[:len(chunk) // 3 * 3]
            out[f"base64@{shift}{part_name}"] = base64.b64encode(chunk)
            out[f"base64url@{shift}{part_name}"] = base64.urlsafe_b64encode(chunk)
    return out


def search(sources: dict[str, list[tuple[str, bytes]]], secrets: dict[str, bytes],
           lab_only: frozenset[str] = frozenset()) -> tuple[dict[str, dict[str, int]], list[str]]:
    """Per source kind: items and bytes searched, hits of the secrets (`hits`) and of those
    named in `lab_only` (`lab_hits`); the hits named (the secret itself never shown)."""
    needles = [(name, form, data) for name, s in secrets.items()
               for form, data in forms(s).items()]
    summary: dict[str, dict[str, int]] = {}
    hits: list[str] = []
    for kind, items in sources.items():
        row = summary.setdefault(kind, {"items": 0, "bytes": 0, "hits": 0, "lab_hits": 0})
        for where, data in items:
            row["items"] += 1
            row["bytes"] += len(data)
            for name, form, needle in needles:
                if needle in data:
                    row["lab_hits" if name in lab_only else "hits"] += 1
                    hits.append(f"{kind}: {where}: {name} ({form})")
    return summary, hits


def _client_secrets(clients: list[Any]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for c in clients:
        for child in c.ike.children():
            ch = child.child
            for attr in ("enc_key_in", "enc_key_out", "integ_key_in", "integ_key_out"):
                value = getattr(ch, attr)
                if value:
                    out[f"{c.name} Child SA {ch.spi_in:08x} {attr}"] = value
        keys = c.ike.core.sa.keys
        for field in dataclasses.fields(keys):
            value = getattr(keys, field.name)
            if value:
                out[f"{c.name} IKE SA {c.ike_sa_id} {field.name}"] = value
    return out


def _clusterctl(lab: str, *argv: str) -> bytes:
    r = subprocess.run([sys.executable, "-m", "cluster.cli", "--lab", lab, *argv],
                       capture_output=True, timeout=60, check=False)
    return r.stdout + r.stderr


def _cli_outputs(lab: Any, spis: list[int]) -> list[tuple[str, bytes]]:
    commands = [["status"], ["health"], ["node", "list"], ["keyd", "list"], ["client", "list"],
                ["sa", "list"], ["policy", "list"],
                *(["sa", "show", f"{spi:08x}"] for spi in spis)]
    out = []
    for cmd in commands:
        for fmt in ("json", "table"):
            out.append((f"clusterctl {' '.join(cmd)} -o {fmt}",
                        _clusterctl(lab.name, *cmd, "-o", fmt)))
    out.append((f"clusterctl lab status --name {lab.name} -o json", subprocess.run(
        [sys.executable, "-m", "cluster.cli", "lab", "status", "--name", lab.name, "-o",
         "json"], capture_output=True, timeout=60, check=False).stdout))
    return out


def run(budget: Budget) -> dict[str, Any]:
    from bench.esp_client import EspClient, Pinger
    from cluster.lab import addresses as A
    from cluster.lab.bench import lab_store, set_node_state
    from cluster.lab.lab import Lab
    from sprayer.backends import inside_netns

    work = Path(tempfile.mkdtemp(prefix="soak-secrets-"))
    hooks = work / "hooks"
    hooks.mkdir()
    payloads = work / "hook-payloads.txt"
    hook = hooks / "record"
    hook.write_text(_HOOK % payloads)
    hook.chmod(0o755)
    name = f"sk{tokens.token_hex(3)}"
    lab = Lab.up(name, nodes=2, keyd=1, hooks_dir=hooks)
    clients: list[Any] = []
    pinger = None
    watch = None
    try:
        watch = subprocess.Popen(
            [sys.executable, "-m", "cluster.cli", "--lab", name, "watch", "-o", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        cas = tuple(x509.load_pem_x509_certificates(lab.pki.ca_cert.read_bytes()))
        psk = lab.pki.psk().encode()
        for i in range(1, budget.secrets_clients + 1):
            rec = lab.add_client(f"sk{i}", ike=False)
            with inside_netns(rec.netns):
                clients.append(EspClient.connect(f"sk{i}", rec.address, A.VIP, psk,
                                                 A.GATEWAY_ID, cas))
        pinger = Pinger(clients, A.SERVER_IP, A.VIP, 0.01)
        pinger.start()
        time.sleep(3)
        set_node_state(lab, "node-1", drain=True)
        time.sleep(3)
        set_node_state(lab, "node-1", drain=False)
        time.sleep(2)
        answered = sum(1 for c in clients if c.replies)
        secrets = _client_secrets(clients)
        secrets["cluster data key"] = bytes.fromhex(lab.pki.data_key_file.read_text().strip())
        secrets["lab PSK"] = psk
        store = lab_store(lab)
        try:
            kvs, _ = store.scan(f"/ipsec-cluster/{name}/")
            etcd = [(bytes(kv.key).decode(errors="replace"), bytes(kv.value)) for kv in kvs]
        finally:
            store.close()
        spis = [c.sa.spi_out for c in clients]  # the cluster's inbound SPIs
        cli = _cli_outputs(lab, spis)
        watch.send_signal(signal.SIGINT)
        try:
            watched, _ = watch.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            watch.kill()
            watched, _ = watch.communicate()
        cli.append(("clusterctl watch -o json (the whole run)", watched or b""))
        watch = None
        if pinger is not None:
            pinger.stop()
            pinger = None
        time.sleep(1)  # the last hook runs finish
        logs = [(str(p.relative_to(lab.dir)), p.read_bytes())
                for p in sorted((lab.dir / "logs").rglob("*")) if p.is_file()]
        hook_items = [("hook stdin and environment", payloads.read_bytes()
                       if payloads.exists() else b"")]
        sources = {"etcd values": etcd, "log files": logs, "clusterctl output": cli,
                   "hook payloads": hook_items}
        summary, hits = search(sources, secrets, frozenset({"lab PSK"}))
        log_lines = sum(data.count(b"\n") for _, data in logs)
        ike_sas = len({c.ike_sa_id for c in clients})
        child_sas = sum(len(c.ike.children()) for c in clients)
        return {"method": METHOD, "keys": len(secrets) - 2, "ike_sas": ike_sas,
                "child_sas": child_sas, "sources": summary, "hit_list": hits,
                "note": (f"Clients answered in ESP: {answered} of {len(clients)}; hook payload "
                         f"bytes recorded: {summary['hook payloads']['bytes']:,}; log lines: "
                         f"{log_lines:,}. Also sought: the "
                         "cluster data key (counted with the SA keys) and the lab PSK (counted "
                         "apart: `clusterctl lab status` prints it by design, docs/lab.md, so "
                         "that a lab user can configure a client of their own; a deployment "
                         "has no lab).")}
    finally:
        if watch is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(watch.pid, signal.SIGTERM)
        if pinger is not None:
            pinger.stop()
        for c in clients:
            with contextlib.suppress(Exception):
                c.close()
        lab.down()
