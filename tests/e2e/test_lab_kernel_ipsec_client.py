"""A kernel-IPsec lab client where the kernel has no ESP (this machine's): refused up front,
with the kernel's answer, before anything is built. (Where the kernel has ESP, in the VM,
tests/kernel/test_mobike_kernel_client.py runs such clients.)"""

from __future__ import annotations

import pytest

from cluster.lab import strongswan
from cluster.lab.errors import LabError
from cluster.lab.lab import Lab
from cluster.lab.state import labs_root


def test_kernel_ipsec_clients_are_refused_without_kernel_esp(lab_name: str) -> None:
    why = strongswan.kernel_esp_missing()
    if why is None:
        pytest.skip("this kernel installs XFRM ESP states: kernel-IPsec clients can run here")
    with pytest.raises(LabError) as e:
        Lab.up(lab_name, nodes=1, clients=1, kernel_ipsec=True)
    assert "kernel-IPsec clients cannot run here" in str(e.value)
    assert "cannot install an XFRM ESP state" in str(e.value) and "VM" in str(e.value)
    assert not (labs_root() / lab_name).exists()

