"""One lab (cluster/lab) for the studies that need a running cluster, shared by them in turn:
real etcd (a cluster of three members), keyd, cluster-node agents, the sprayer and
cluster-hooks (with a hook that records every payload it gets), `clusterctl watch -o json`
running throughout, and clients made by the project's IKE initiator (bench/esp_client.py)
that ping the protected server in ESP, and one strongSwan client receiving a TCP stream
(soak/tcp_stream.py). The secrets study runs last and searches everything
the others left behind."""

from __future__ import annotations

import contextlib
import os
import secrets as tokens
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography import x509

from bench.esp_client import EspClient, Pinger
from cluster.host import inside_netns
from cluster.lab import addresses as A
from cluster.lab import faults
from cluster.lab.bench import lab_store, set_node_state
from cluster.lab.demo import owners
from cluster.lab.errors import LabError
from cluster.lab.lab import Lab
from soak.tcp_stream import TcpStream

_HOOK = """#!/bin/sh
# soak: record every payload cluster-hooks gives a hook (stdin and environment)
{ echo "== event $1"; cat; echo; env; } >> "%s"
"""

PERIOD_S = 0.01  # one echo per client this often
VIP, SERVER_IP = A.VIP, A.SERVER_IP


class LabSession:
    def __init__(self, nodes: int, clients: int, etcd_members: int = 3) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="soak-lab-"))
        hooks = self.work / "hooks"
        hooks.mkdir()
        self.hook_payloads = self.work / "hook-payloads.txt"
        hook = hooks / "record"
        hook.write_text(_HOOK % self.hook_payloads)
        hook.chmod(0o755)
        self.name = f"sk{tokens.token_hex(3)}"
        self.vip, self.gateway_id = VIP, A.GATEWAY_ID
        self.lab = Lab.up(self.name, nodes=nodes, keyd=1, hooks_dir=hooks,
                          etcd_members=etcd_members)
        self.clients: list[EspClient] = []
        self.extra: list[EspClient] = []  # clients made by studies (no traffic)
        self.pinger: Pinger | None = None
        self.tcp: TcpStream | None = None  # a strongSwan client's TCP stream (soak/tcp_stream)
        self.tcp_error = ""
        self.save_logs_to: Path | None = None  # set: the lab's logs are kept there at close
        self.watch: subprocess.Popen[bytes] | None = None
        self.watched = b""
        self._n = 0
        self.esp_packets = self.seq_reused = self.iv_reused = 0
        self._seqs: set[int] = set()
        self._ivs: set[int] = set()
        self._spis: set[bytes] = set()
        try:
            self.watch = subprocess.Popen(
                [sys.executable, "-m", "cluster.cli", "--lab", self.name, "watch", "-o", "json"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
            self.cas = tuple(x509.load_pem_x509_certificates(self.lab.pki.ca_cert.read_bytes()))
            self.psk = self.lab.pki.psk().encode()
            self.clients = [self.connect() for _ in range(clients)]
            for c in self.clients:
                self._capture(c)
            self.pinger = Pinger(self.clients, SERVER_IP, VIP, PERIOD_S)
            self.pinger.start()
            try:
                self.tcp = TcpStream(self.lab)
            except LabError as exc:  # the studies run without it; the report says why
                self.tcp_error = str(exc)
        except BaseException:
            self.close()
            raise

    def connect(self, timeout_s: float = 30.0) -> EspClient:
        """A new client (its own namespace) established through the VIP."""
        self._n += 1
        name = f"sk{self._n}"
        rec = self.lab.add_client(name, ike=False)
        with inside_netns(rec.netns):
            return EspClient.connect(name, rec.address, VIP, self.psk, A.GATEWAY_ID, self.cas,
                                     timeout_s)

    # -- the ESP capture -------------------------------------------------------------------
    def _capture(self, client: EspClient) -> None:
        """Record (SPI, sequence number) and (SPI, explicit IV) of every ESP packet `client`
        receives from the cluster, before the client opens it."""
        receive = client.on_datagram

        def on_datagram(data: bytes, src: tuple[str, int], now: float) -> None:
            if len(data) >= 16 and data[:4] != bytes(4):
                self.esp_packets += 1
                seq, iv = int.from_bytes(data[:8]), int.from_bytes(data[:4] + data[8:16])
                if seq in self._seqs:
                    self.seq_reused += 1
                self._seqs.add(seq)
                if iv in self._ivs:
                    self.iv_reused += 1
                self._ivs.add(iv)
                self._spis.add(data[:4])
            receive(data, src, now)

        client.on_datagram = on_datagram  # type: ignore[method-assign]

    def capture_summary(self) -> dict[str, int]:
        # plain reads: the pinger thread keeps adding to the sets meanwhile
        return {"esp_captured": self.esp_packets, "seq_reused": self.seq_reused,
                "iv_reused": self.iv_reused, "spis_captured": len(self._spis)}

    # -- what studies look at ------------------------------------------------------------
    def owner_of(self) -> dict[str, str]:
        """client name → the node the router sends its traffic to."""
        route = owners(self.lab)
        return {c.name: route.get(c.virtual_ip, "?") for c in self.clients}

    def nodes(self) -> list[str]:
        return [f"node-{i}" for i in range(1, self.lab.state.nodes + 1)]

    def answering(self, clients: list[EspClient], within_s: float = 0.3) -> bool:
        now = time.monotonic()
        return all(c.replies and now - c.replies[-1] < within_s for c in clients)

    def drain(self, node: str, drain: bool) -> None:
        set_node_state(self.lab, node, drain)

    def cut(self, node: str, cut: bool) -> None:
        (faults.cut_link if cut else faults.restore_link)(self.lab, node)

    def count_esp(self, node: str) -> None:
        faults.count_esp_sent(self.lab, node)

    def esp_sent(self, node: str) -> int:
        return faults.esp_sent(self.lab, node)

    def in_member(self, member: str, argv: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.lab.exec_argv(member, argv), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)

    def etcd_values(self) -> list[tuple[str, bytes]]:
        store = lab_store(self.lab)
        try:
            kvs, _ = store.scan(f"/ipsec-cluster/{self.name}/")
        finally:
            store.close()
        return [(bytes(kv.key).decode(errors="replace"), bytes(kv.value)) for kv in kvs]

    def logs(self) -> list[tuple[str, bytes]]:
        return [(str(p.relative_to(self.lab.dir)), p.read_bytes())
                for p in sorted((self.lab.dir / "logs").rglob("*")) if p.is_file()]

    def clusterctl(self, *argv: str) -> bytes:
        """What `clusterctl --lab LAB ARGV` prints (stdout and stderr), run in this process
        through click's runner (a process per command would cost seconds each here)."""
        from click.testing import CliRunner

        from cluster.cli.main import cli
        r = CliRunner().invoke(cli, ["--endpoints", self.lab.etcd_endpoint, "--cluster",
                                     self.name, *argv])
        return r.stdout_bytes + r.stderr_bytes

    def stop_watch(self) -> bytes:
        """Stop `clusterctl watch` and return everything it printed."""
        if self.watch is not None:
            self.watch.send_signal(signal.SIGINT)
            try:
                out, _ = self.watch.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.watch.pid, signal.SIGKILL)
                out, _ = self.watch.communicate()
            self.watched += out or b""
            self.watch = None
        return self.watched

    def stop_traffic(self) -> None:
        if self.pinger is not None:
            self.pinger.stop()
            self.pinger = None

    def close(self) -> None:
        try:
            self.stop_traffic()
            if self.watch is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.watch.pid, signal.SIGKILL)
            for c in self.clients + self.extra:
                with contextlib.suppress(Exception):
                    c.close()
        finally:
            self.lab.down(self.save_logs_to)
            shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> LabSession:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
