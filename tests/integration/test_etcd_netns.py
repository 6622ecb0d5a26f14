"""EtcdServer started inside a network namespace waits until etcd answers there."""

import os
import subprocess
import uuid

import pytest

from cluster.procs import EtcdServer


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")
def test_etcd_in_a_namespace_starts_and_answers(tmp_path) -> None:
    ns = f"ipsc-t{uuid.uuid4().hex[:6]}-etcd"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        server = EtcdServer(tmp_path, netns=ns)
        server.start(timeout_s=30)
        try:
            r = subprocess.run(
                ["ip", "netns", "exec", ns, "etcdctl", "--endpoints", server.endpoint,
                 "endpoint", "health"], capture_output=True, text=True, timeout=20,
                env={**os.environ, "ETCDCTL_API": "3"})
            assert "is healthy" in r.stdout + r.stderr
        finally:
            server.stop()
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
