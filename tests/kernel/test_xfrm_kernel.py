"""The VM's kernel carries ESP: the modules the kernel data path needs load."""

from __future__ import annotations

import subprocess
from pathlib import Path


def test_xfrm_modules_load() -> None:
    for module in ("xfrm_user", "esp4", "xfrm_interface"):
        subprocess.run(["modprobe", module], check=True)
    assert Path("/proc/net/xfrm_stat").exists()
    modules = Path("/proc/modules").read_text()
    assert "esp4 " in modules and "xfrm_interface " in modules
