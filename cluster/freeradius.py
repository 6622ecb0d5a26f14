"""A real FreeRADIUS (Debian's `freeradius` 3.x) for the tests and the lab: a copy of
/etc/freeradius/3.0 in a directory of its own, with its own clients.conf and users, listening
on a loopback port, started in the foreground (`-f`) and stopped by PID."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .procs import Spawned, spawn

SYSTEM_RADDB = Path("/etc/freeradius/3.0")


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port on `host` and the one after it (FreeRADIUS takes port+1 for accounting)
    that nobody has bound right now."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port < 65535:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                try:
                    s.bind((host, port + 1))
                except OSError:
                    continue
            return port


def _without_listen(site: str, replacement: str) -> str:
    """A virtual server's text without its top-level `listen { ... }` sections (the copy must
    not bind the system's ports), `replacement` where the first one was."""
    out: list[str] = []
    depth = 0
    placed = False
    for line in site.splitlines(keepends=True):
        code = line.split("#", 1)[0]
        if depth == 0 and code.startswith("listen {"):
            depth = code.count("{") - code.count("}")
            if not placed:
                out.append(replacement)
                placed = True
            continue
        if depth > 0:
            depth += code.count("{") - code.count("}")
            continue
        out.append(line)
    return "".join(out)


@dataclass
class RadiusUser:
    """A line of the `users` file: the password and the reply attributes."""

    name: str
    password: str
    reply: dict[str, str] = field(default_factory=dict)  # e.g. {"Framed-IP-Address": ...}


class FreeRadiusServer(Spawned):
    def __init__(self, directory: Path, users: list[RadiusUser], secret: str,
                 host: str = "127.0.0.1", port: int | None = None,
                 client: str = "127.0.0.1", eap_tls: dict[str, Path] | None = None) -> None:
        """`eap_tls`: {"cert", "key", "ca"} PEM paths for the EAP-TLS method (the server's
        certificate and the CA its clients' certificates must come from)."""
        self.directory = directory
        self.users = users
        self.secret = secret
        self.host = host
        self.port = port or free_udp_port(host)
        self.client = client
        self.eap_tls = eap_tls
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def raddb(self) -> Path:
        return self.directory / "raddb"

    @property
    def log_path(self) -> Path:
        return self.directory / "radiusd.log"

    def write_config(self) -> None:
        if not SYSTEM_RADDB.is_dir():
            raise RuntimeError("freeradius is not installed: run `make bootstrap`")
        shutil.rmtree(self.raddb, ignore_errors=True)
        shutil.copytree(SYSTEM_RADDB, self.raddb, symlinks=True)
        for sub in ("run", "log"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        conf = self.raddb / "radiusd.conf"
        text = conf.read_text()
        text = re.sub(r"(?m)^raddbdir = .*$", f"raddbdir = {self.raddb}", text)
        text = re.sub(r"(?m)^run_dir = .*$", f"run_dir = {self.directory / 'run'}", text)
        text = re.sub(r"(?m)^logdir = .*$", f"logdir = {self.directory / 'log'}", text)
        text = re.sub(r"(?m)^(\s*)(user|group) = freerad$", r"\1# \2 = freerad", text)
        conf.write_text(text)
        for site, listen in (("default", f"listen {{\n\ttype = auth\n\tipaddr = {self.host}\n"
                                         f"\tport = {self.port}\n}}\n"),
                             ("inner-tunnel", "")):
            path = self.raddb / "sites-available" / site
            path.write_text(_without_listen(path.read_text(), listen))
        (self.raddb / "clients.conf").write_text(
            f"client keyd {{\n\tipaddr = {self.client}\n\tsecret = {self.secret}\n"
            f"\trequire_message_authenticator = yes\n}}\n")
        lines = []
        for user in self.users:
            lines.append(f'{user.name}\tCleartext-Password := "{user.password}"')
            lines += [f"\t{k} = {v}," for k, v in user.reply.items()]
            if user.reply:
                lines[-1] = lines[-1].rstrip(",")
        authorize = self.raddb / "mods-config" / "files" / "authorize"
        authorize.unlink()
        authorize.write_text("\n".join(lines) + "\n")
        if self.eap_tls is not None:
            eap = self.raddb / "mods-available" / "eap"
            text = eap.read_text()
            text = text.replace("/etc/ssl/private/ssl-cert-snakeoil.key",
                                str(self.eap_tls["key"]))
            text = text.replace("/etc/ssl/certs/ssl-cert-snakeoil.pem",
                                str(self.eap_tls["cert"]))
            text = text.replace("/etc/ssl/certs/ca-certificates.crt", str(self.eap_tls["ca"]))
            eap.write_text(text)

    def argv(self) -> list[str]:
        return ["freeradius", "-f", "-X", "-d", str(self.raddb)]

    @staticmethod
    def ready(log_path: Path) -> bool:
        """The server's log (of `argv`) says it serves."""
        return log_path.exists() and b"Ready to process requests" in log_path.read_bytes()

    def start(self, timeout_s: float = 20.0) -> None:
        self.write_config()
        self.proc = spawn(self.argv(), self.log_path)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self.ready(self.log_path):
                return
            time.sleep(0.05)
        log = self.log_path.read_text(errors="replace")[-3000:]
        self.stop()
        raise RuntimeError(f"freeradius did not start on {self.host}:{self.port}:\n{log}")
