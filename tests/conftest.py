"""Fixtures shared by every test tier.

`etcd_server` is a real etcd (Debian's etcd-server) on a free loopback port with a temporary
data dir, started once per session and stopped afterwards. There is no mock etcd.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.procs import EtcdServer


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by its tier directory: tests/unit → unit, and so on."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in ("unit", "integration", "e2e", "kernel"):
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    if shutil.which("etcd") is None:
        pytest.fail("etcd is not installed: run `make bootstrap`")
    server = EtcdServer(tmp_path_factory.mktemp("etcd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def etcd_endpoint(etcd_server: EtcdServer) -> str:
    return etcd_server.endpoint


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
