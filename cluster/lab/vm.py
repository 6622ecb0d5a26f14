"""Commands inside a VM running Debian's own kernel, for what this machine's kernel lacks.

The host kernel here has no ESP (no XFRM data path); Debian's `linux-image-amd64` has it as
modules. `virtme-ng` (`vng`) boots that kernel on the host's own root filesystem — read-only
over 9p, with writable overlays on /tmp and friends — so strongSwan, etcd and the project's
.venv are all there, and runs one command in it. Guests hang right after the boot loader
under KVM on this kind of machine, so the VM runs under TCG (`--disable-kvm`): a boot takes
about 20 s, so callers batch everything they need into one command.

`missing()` says in one line why no VM can run here (None: it can); `run` boots, runs the
command with the given directory as the working directory and PYTHONPATH, and returns its
exit status and output.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

#: set in the guest's environment: tests use it to know they are inside the VM
IN_VM_ENV = "IPSEC_CLUSTER_IN_VM"
#: set (=1) to run the kernel tier's lab tests too (a whole lab in the VM: minutes under TCG)
KERNEL_LAB_ENV = "IPSEC_CLUSTER_KERNEL_LAB"
BOOT = Path("/boot")
MODULES = Path("/lib/modules")
MEMORY = "2G"
CPUS = 2
#: inside the VM (TCG, its root over 9p, on a shared machine) a Python daemon takes a minute
#: or two to import and start, a command seconds: the lab waits this many times longer there
SLOWDOWN = 8


@dataclass(frozen=True, slots=True)
class VmResult:
    returncode: int
    output: str  # the guest command's stdout and stderr, interleaved (the VM's console)
    kernel: str


def in_vm() -> bool:
    return os.environ.get(IN_VM_ENV) == "1"


def kernel_lab_wanted() -> bool:
    """Whether the kernel tier's lab tests run (`KERNEL_LAB_ENV`=1)."""
    return os.environ.get(KERNEL_LAB_ENV) == "1"


def patient(timeout_s: float) -> float:
    """A wait or a command's time limit, stretched inside the VM."""
    return timeout_s * SLOWDOWN if in_vm() else timeout_s


def vng_path() -> str | None:
    """`vng` next to this Python (the .venv), else on PATH."""
    here = Path(sys.executable).parent / "vng"
    if here.exists():
        return str(here)
    return shutil.which("vng")


def kernel_image() -> tuple[str, Path] | None:
    """(version, image) of the newest /boot/vmlinuz-* whose modules are installed."""
    found = []
    for image in BOOT.glob("vmlinuz-*"):
        version = image.name.removeprefix("vmlinuz-")
        if (MODULES / version / "kernel").is_dir():
            key = tuple(int(n) for n in re.findall(r"\d+", version))
            found.append((key, version, image))
    if not found:
        return None
    _, version, image = max(found)
    return version, image


def missing() -> str | None:
    """Why no VM can be booted here, in one line (None: everything is there)."""
    if os.geteuid() != 0:
        return "needs root (the guest runs network namespaces and loads modules)"
    if vng_path() is None:
        return "virtme-ng (vng) is not installed: run `make bootstrap`"
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86 is not installed: run `make bootstrap`"
    if shutil.which("busybox") is None:
        return "busybox-static is not installed: run `make bootstrap`"
    if kernel_image() is None:
        return "no kernel image with modules in /boot (linux-image-amd64): run `make bootstrap`"
    return None


def run(command: str, *, cwd: Path, rwdirs: tuple[Path, ...] = (), timeout_s: float = 900,
        env: dict[str, str] | None = None, log: Path | None = None) -> VmResult:
    """Boot the VM once and run `command` (a shell command line) in `cwd`, with `cwd` first
    on PYTHONPATH and IN_VM_ENV set. `rwdirs` are host directories the guest may write to
    (everything else it writes lands in throw-away overlays). The output also goes to `log`
    when given. RuntimeError if the VM tools are missing; subprocess.TimeoutExpired when the
    whole run takes longer than `timeout_s`."""
    why = missing()
    if why is not None:
        raise RuntimeError(f"cannot boot the VM: {why}")
    vng = vng_path()
    found = kernel_image()
    assert vng is not None and found is not None
    version, image = found
    guest_env = {"PYTHONPATH": str(cwd), IN_VM_ENV: "1", "PYTHONDONTWRITEBYTECODE": "1",
                 "PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin",
                 **(env or {})}
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in guest_env.items())
    script = f"cd {shlex.quote(str(cwd))} && env {exports} sh -c {shlex.quote(command)}"
    argv = [vng, "--run", str(image), "--disable-kvm", "--memory", MEMORY,
            "--cpus", str(CPUS)]
    for d in rwdirs:
        argv += ["--rwdir", str(d)]
    argv += ["--exec", script]
    # vng runs its helpers (virtme-run) from PATH: the ones next to it
    host_env = {**os.environ, "PATH": f"{Path(vng).parent}:{os.environ.get('PATH', '')}"}
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=timeout_s, env=host_env,
                          check=False)
    output = proc.stdout.decode(errors="replace")
    if log is not None:
        log.write_text(output)
    return VmResult(proc.returncode, output, version)
