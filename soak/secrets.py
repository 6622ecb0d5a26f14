"""Study 6: secrets. After the other lab studies (soak/session.py), every place an operator or
an attacker on the etcd side could look is searched for the key bytes of every IKE SA and
Child SA of the run (the project's initiator holds the same keys as the cluster), the cluster
data key and the lab PSK: every etcd value, every log line of every component, the output of
every clusterctl read command in `-o json` and as tables (and of `clusterctl watch` over the
whole run), and every hook payload (stdin and environment)."""

from __future__ import annotations

import base64
import dataclasses
import os
import subprocess
import sys
import time
from typing import Any

from soak.budget import Budget

METHOD = (
    "After the other lab studies, in the same lab (soak/session.py: a three-member etcd, one "
    "keyd, nodes, the sprayer, cluster-hooks; clients made by the project's IKE initiator, "
    "PSK, AES-GCM, pinging the protected server in ESP; `clusterctl watch -o json` running "
    "throughout); every client any study made has its keys sought. Each secret is sought as "
    "raw bytes, hex (lower, upper, colon-separated) and base64 (standard and URL-safe, at the "
    "three byte alignments), whole and as its first 16 bytes (an AEAD key without its salt). "
    "`clusterctl lab status` is searched in both formats.")


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


def _cli_outputs(session: Any, spis: list[int]) -> list[tuple[str, bytes]]:
    commands = [["status"], ["health"], ["node", "list"], ["keyd", "list"], ["client", "list"],
                ["sa", "list"], ["policy", "list"],
                *(["sa", "show", f"{spi:08x}"] for spi in spis)]
    out = []
    for cmd in commands:
        for fmt in ("json", "table"):
            out.append((f"clusterctl {' '.join(cmd)} -o {fmt}",
                        session.clusterctl(*cmd, "-o", fmt)))
    for fmt in ("json", "table"):
        # wide: a table cell wrapped over two lines would hide a value from the search
        out.append((f"clusterctl lab status --name {session.name} -o {fmt}", subprocess.run(
            [sys.executable, "-m", "cluster.cli", "lab", "status", "--name", session.name,
             "-o", fmt], capture_output=True, timeout=60, check=False,
            env={**os.environ, "COLUMNS": "400"}).stdout))
    return out


def run(session: Any, budget: Budget) -> dict[str, Any]:
    """After the other lab studies: search what the whole run left behind."""
    clients = session.clients + session.extra
    answered = sum(1 for c in session.clients if c.replies)
    secrets = _client_secrets(clients)
    secrets["cluster data key"] = bytes.fromhex(
        session.lab.pki.data_key_file.read_text().strip())
    secrets["lab PSK"] = session.psk
    etcd = session.etcd_values()
    spis = [c.sa.spi_out for c in clients]  # the cluster's inbound SPIs
    cli = _cli_outputs(session, spis)
    session.stop_traffic()
    cli.append(("clusterctl watch -o json (the whole run)", session.stop_watch()))
    time.sleep(1)  # the last hook runs finish
    logs = session.logs()
    payloads = session.hook_payloads
    hook_items = [("hook stdin and environment",
                   payloads.read_bytes() if payloads.exists() else b"")]
    sources = {"etcd values": etcd, "log files": logs, "clusterctl output": cli,
               "hook payloads": hook_items}
    summary, hits = search(sources, secrets, frozenset({"lab PSK"}))
    log_lines = sum(data.count(b"\n") for _, data in logs)
    ike_sas = len({c.ike_sa_id for c in clients})
    child_sas = sum(len(c.ike.children()) for c in clients)
    return {"method": METHOD, "keys": len(secrets) - 2, "ike_sas": ike_sas,
            "child_sas": child_sas, "sources": summary, "hit_list": hits,
            "note": (f"Clients with traffic: {len(session.clients)}, answered in ESP: "
                     f"{answered}; clients made by the other studies: {len(session.extra)}; "
                     f"hook payload bytes recorded: {summary['hook payloads']['bytes']:,}; log "
                     f"lines: {log_lines:,}. Also sought: the cluster data key (counted with "
                     "the SA keys) and the lab PSK (counted apart, since only a lab has it; "
                     "`clusterctl lab status` shows its file and a SHA-256 fingerprint, "
                     "docs/lab.md).")}
