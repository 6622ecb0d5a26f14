"""The runner of the kernel tier: one VM boot that runs every `kernel` test inside it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cluster.lab import vm

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 900
LAB_ENV = vm.KERNEL_LAB_ENV
LAB_TIMEOUT_S = 1800


def test_kernel_tier_in_vm(tmp_path: Path) -> None:
    why = vm.missing()
    if why is not None:
        pytest.skip(f"kernel tier (XFRM tests in a VM) not run: {why}")
    log = tmp_path / "vm-console.log"
    command = (f"{sys.executable} -m pytest -p no:cacheprovider -m kernel -q -rA "
               f"--basetemp=/tmp/kernel-tier tests/kernel")
    # the lab tests (test_kernel_dataplane_lab.py, test_mobike_kernel_client.py) run only
    # when asked for
    lab = vm.kernel_lab_wanted()
    result = vm.run(command, cwd=ROOT, timeout_s=TIMEOUT_S + (LAB_TIMEOUT_S if lab else 0),
                    log=log, env={LAB_ENV: "1"} if lab else None)
    tail = "\n".join(result.output.splitlines()[-80:])
    assert result.returncode == 0, (
        f"kernel tier failed in the VM ({result.kernel}, exit {result.returncode}); "
        f"console in {log}:\n{tail}")
    print(tail)
