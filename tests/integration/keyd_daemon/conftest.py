"""Fixtures for keyd's integration tests: a Store on the session's real etcd, in a keyspace
(cluster name) of its own per test so tests never see each other's keys."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from cluster.procs import free_port, spawn, stop_pid
from cluster.store.client import Store
from cluster.store.keyspace import Keyspace
from cluster.store.seal import DataKey, load_data_key, write_data_key


@pytest.fixture
def data_key_file(tmp_path: Path) -> Path:
    path = tmp_path / "data.key"
    write_data_key(path)
    return path


@pytest.fixture
def data_key(data_key_file: Path) -> DataKey:
    return load_data_key(data_key_file, environ={})


@pytest.fixture
def cluster_name() -> str:
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
def store(etcd_endpoint: str, cluster_name: str, data_key: DataKey) -> Iterator[Store]:
    s = Store([etcd_endpoint], Keyspace(cluster_name), data_key, timeout_s=5.0)
    try:
        yield s
    finally:
        s.raw.delete_prefix(s.keyspace.root)
        s.close()


# -- a keyd process on loopback ------------------------------------------------------------

PSK = b"integration-test-psk-0123456789"
GATEWAY_ID = "vpn.test.example"
KEYD_BIN = Path(sys.executable).parent / "keyd"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class KeydSetup:
    """Files and ports for keyd instances sharing one cluster keyspace."""

    directory: Path
    etcd_endpoint: str
    cluster: str
    psk_file: Path
    data_key_file: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def config(self, keyd_id: str, ike_port: int, natt_port: int, metrics_port: int,
               pool: str = "10.99.0.0/24", extra: str = "",
               protected_networks: tuple[str, ...] = ("10.20.0.0/24",)) -> Path:
        path = self.directory / f"{keyd_id}.toml"
        path.write_text(f"""
[cluster]
name = "{self.cluster}"
data_key_file = "{self.data_key_file}"

[etcd]
endpoints = ["{self.etcd_endpoint}"]
timeout_s = 1.0

[log]
level = "debug"

[metrics]
listen = "127.0.0.1:{metrics_port}"

[keyd]
id = "{keyd_id}"
vip = "127.0.0.1"
ike_port = {ike_port}
natt_port = {natt_port}
identity = "{GATEWAY_ID}"
psk_file = "{self.psk_file}"
pool = "{pool}"
dns = ["10.20.0.53"]
protected_networks = {json.dumps(list(protected_networks))}
{extra}
""")
        return path

    def start(self, keyd_id: str, ike_port: int | None = None, natt_port: int | None = None,
              env: dict[str, str] | None = None, wait: bool = True,
              extra: str = "",
              protected_networks: tuple[str, ...] = ("10.20.0.0/24",)) -> KeydInstance:
        ike_port = ike_port or free_udp_port()
        natt_port = natt_port or free_udp_port()
        metrics_port = free_port()
        conf = self.config(keyd_id, ike_port, natt_port, metrics_port, extra=extra,
                           protected_networks=protected_networks)
        log = self.directory / f"{keyd_id}.log"
        proc = spawn([str(KEYD_BIN), "--config", str(conf)], log,
                     env={**os.environ, **(env or {})})
        self.procs.append(proc)
        inst = KeydInstance(keyd_id, proc, ike_port, natt_port, metrics_port, log)
        if wait:
            inst.wait_ready()
        return inst

    def stop_all(self) -> None:
        for proc in self.procs:
            stop_pid(proc.pid)


@dataclass
class KeydInstance:
    id: str
    proc: subprocess.Popen[bytes]
    ike_port: int
    natt_port: int
    metrics_port: int
    log: Path

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"keyd exited: {self.log.read_text()[-3000:]}")
            try:
                requests.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=1)
                return
            except requests.RequestException:
                time.sleep(0.1)
        raise TimeoutError(f"keyd not ready: {self.log.read_text()[-3000:]}")

    def metric(self, name: str, **labels: str) -> float:
        text = requests.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
                       if labels else "")
        for line in text.splitlines():
            if line.startswith(want + " "):
                return float(line.split()[-1])
        return 0.0

    def kill(self) -> None:
        stop_pid(self.proc.pid)


@pytest.fixture
def keyd_setup(tmp_path: Path, etcd_endpoint: str, cluster_name: str,
               data_key_file: Path) -> Iterator[KeydSetup]:
    psk_file = tmp_path / "psk"
    psk_file.write_bytes(PSK)
    psk_file.chmod(0o600)
    setup = KeydSetup(tmp_path, etcd_endpoint, cluster_name, psk_file, data_key_file)
    try:
        yield setup
    finally:
        setup.stop_all()
