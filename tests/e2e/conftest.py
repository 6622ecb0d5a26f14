"""The e2e tier runs in the lab: real namespaces, real etcd, real strongSwan clients.

`lab` is a lab with a unique name, up for one test and always taken down afterwards (also when
the test fails). Configure it with a marker:

    @pytest.mark.lab(nodes=2, keyd=1, clients=1, gateway="cluster")
    def test_x(lab): ...

`make_lab(**kwargs)` builds further labs in one test; each is taken down at the end, its logs
and configuration kept in the test's tmp_path under lab-logs/<lab name>/.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster.lab import lab as labmod
from cluster.lab.lab import Lab


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "lab(**kwargs): arguments for the `lab` fixture's Lab.up (nodes, keyd, "
        "clients, gateway)")


def _require_lab_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces)")
    for tool in ("ip", "nft", "etcd", "swanctl", "iperf3", "nsenter", "unshare"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: run `make bootstrap`")
    if not os.path.exists("/usr/lib/ipsec/charon"):
        pytest.fail("strongSwan's charon is not installed: run `make bootstrap`")


def unique_lab_name(stem: str = "e2e") -> str:
    return f"{stem[:10]}-{secrets.token_hex(3)}"


@pytest.fixture
def lab_logs(tmp_path: Path) -> Path:
    """Where a test's labs leave their logs and configuration when they are taken down."""
    return tmp_path / "lab-logs"


@pytest.fixture
def lab_name(lab_logs: Path) -> Iterator[str]:
    """A fresh lab name for a test that drives the lab itself (the CLI); downed afterwards."""
    _require_lab_tools()
    name = unique_lab_name()
    try:
        yield name
    finally:
        labmod.down(name, lab_logs / name)


@pytest.fixture
def make_lab(lab_logs: Path) -> Iterator[Callable[..., Lab]]:
    _require_lab_tools()
    made: list[str] = []

    def make(**kwargs: Any) -> Lab:
        name = kwargs.pop("name", None) or unique_lab_name()
        made.append(name)
        return Lab.up(name, save_logs_to=lab_logs / name, **kwargs)

    try:
        yield make
    finally:
        for name in made:
            labmod.down(name, lab_logs / name)


@pytest.fixture
def lab(request: pytest.FixtureRequest, make_lab: Callable[..., Lab]) -> Lab:
    marker = request.node.get_closest_marker("lab")
    return make_lab(**(marker.kwargs if marker else {}))
