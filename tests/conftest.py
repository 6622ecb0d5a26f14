"""Fixtures shared by every test tier.

`etcd_server` is a real etcd (Debian's etcd-server) on a free loopback port with a temporary
data dir, started once per session and stopped afterwards. There is no mock etcd.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from xdist.scheduler import LoadScopeScheduling

from cluster.procs import EtcdServer

# Property tests are checked by their examples, not timed: the machine is shared (and, in
# `make test`, busy with the other worker's daemons).
settings.register_profile("project", deadline=None)
settings.load_profile("project")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by its tier directory: tests/unit → unit, and so on."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in ("unit", "integration", "e2e", "kernel"):
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))


#: the tests that run one after another in one pytest-xdist worker (`make test`)
LAB_TIERS = ("tests/e2e/", "tests/kernel/")


class LabLane(LoadScopeScheduling):
    """`make test` runs two workers (-n 2 --dist loadscope): the lab tests (tests/e2e, and
    the kernel tier's VM boot) one after another in one of them, as they always ran; the
    unit and integration tests a module at a time (module fixtures set up once) in the
    other, while the first waits: most of a lab test's time goes to timers and real
    daemons, not to the CPU. (The scheduler sees node ids only, hence by path.)"""

    def _split_scope(self, nodeid: str) -> str:
        if nodeid.startswith(LAB_TIERS):
            return "lab"
        return nodeid.split("::", 1)[0]


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> LoadScopeScheduling | None:
    if config.getvalue("dist") != "loadscope":
        return None
    return LabLane(config, log)


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
