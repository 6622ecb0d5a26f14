"""The kernel tier: tests that need Linux's own ESP (XFRM), run inside a VM.

This machine's kernel has no ESP, so the tests in this directory (marker `kernel`) run in a
VM booted with Debian's kernel (cluster.lab.vm). On the host they are deselected and one
test, `test_kernel_tier_in_vm`, boots the VM once and runs them all inside it (a TCG boot
costs about 20 s: one boot for the whole tier). Where no VM can run, that one test is
skipped with the reason. Inside the VM (IPSEC_CLUSTER_IN_VM=1) the runner is deselected.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.lab import vm

HERE = Path(__file__).resolve().parent
RUNNER = "test_kernel_tier_in_vm"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep, drop = [], []
    for item in items:
        if HERE not in Path(str(item.fspath)).parents:
            keep.append(item)
        elif (item.name == RUNNER) == vm.in_vm():
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
