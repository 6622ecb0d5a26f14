"""What a lab has created, written down before and after each step.

`state.json` in the lab's directory records every namespace, process (PID plus its kernel
start time, so a recycled PID is never signalled) and client, so `lab down` can remove all
of it, also after the process that built the lab crashed half way.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cluster.lab.errors import LabError

ROOT_ENV = "IPSEC_CLUSTER_LAB_ROOT"
DEFAULT_ROOT = Path("/var/lib/ipsec-cluster/lab")
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,19}$")
STATE_VERSION = 1


def labs_root() -> Path:
    return Path(os.environ.get(ROOT_ENV) or DEFAULT_ROOT)


def check_name(name: str, what: str = "lab name") -> str:
    """Names become parts of namespace names and file names: keep them short and plain."""
    if not _NAME.match(name):
        raise LabError(f"bad {what} {name!r}: use 1-20 of a-z, 0-9 and '-', starting with a "
                       "letter or digit")
    return name


def _stat(pid: int) -> list[str] | None:
    """/proc/pid/stat's fields after the command name, None if pid is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def proc_start_ticks(pid: int) -> int | None:
    """The kernel's start time of pid (field 22 of /proc/pid/stat), None if it is gone."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def proc_running(pid: int, start_ticks: int | None = None) -> bool:
    """pid exists, is no zombie and (if given) started at start_ticks: the same process."""
    fields = _stat(pid)
    if fields is None or fields[0] == "Z":
        return False
    return start_ticks is None or int(fields[19]) == start_ticks


@dataclass
class ProcessRecord:
    """One process the lab started."""

    role: str               # "etcd", "keyd-1", "node-2", "sprayer", "client:alice", ...
    pid: int
    start_ticks: int | None  # identifies the process together with pid
    argv: list[str]
    log: str                 # its output file
    netns: str | None        # None: the root namespace

    def alive(self) -> bool:
        return proc_running(self.pid, self.start_ticks)


@dataclass
class ClientRecord:
    """One client namespace on the front network (or behind the NAT namespace)."""

    name: str
    slot: int
    netns: str
    address: str
    auth: str                # "psk" | "cert" | "eap-mschapv2" | "eap-tls"
    behind_nat: bool
    ike: bool                # runs charon
    identity: str
    swanctl_conf: str | None = None


@dataclass
class LabState:
    name: str
    prefix: str              # every namespace of this lab starts with it
    directory: str
    gateway: str             # "cluster" | "strongswan"
    nodes: int
    keyd: int
    radius: bool = False     # keyd relays EAP to a FreeRADIUS in keyd-1's namespace
    node_dataplane: str = "userspace"  # the nodes' [node] dataplane
    etcd_port: int = 0       # the root namespace's loopback forwarder into the etcd namespace
    etcd_members: int = 1    # 1: process "etcd"; 3: "etcd-1".."etcd-3", one cluster
    namespaces: list[str] = field(default_factory=list)
    processes: dict[str, ProcessRecord] = field(default_factory=dict)
    clients: dict[str, ClientRecord] = field(default_factory=dict)
    ready: bool = False
    version: int = STATE_VERSION

    @property
    def path(self) -> Path:
        return Path(self.directory) / "state.json"

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True))
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, name: str) -> LabState:
        path = labs_root() / name / "state.json"
        try:
            raw: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            raise LabError(f"no lab named {name!r} (nothing at {path})") from None
        except (OSError, ValueError) as exc:
            raise LabError(f"lab state {path} is unreadable: {exc}") from None
        try:
            raw["processes"] = {k: ProcessRecord(**v) for k, v in raw["processes"].items()}
            raw["clients"] = {k: ClientRecord(**v) for k, v in raw["clients"].items()}
            return cls(**raw)
        except (KeyError, TypeError, AttributeError) as exc:
            raise LabError(f"lab state {path} is malformed ({exc}); `clusterctl lab down "
                           f"--name {name}` still removes the lab") from None

    def remove_files(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
