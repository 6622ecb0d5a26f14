"""The HAProxy driver: mirror node membership, drain and weights into an HAProxy backend.

For deployments that front the cluster with HAProxy, e.g. for TCP-encapsulated IKE and ESP
(RFC 8229). Community HAProxy carries TCP (and HTTP), not UDP: this driver never replaces the
nftables path for IKE/ESP over UDP; it keeps the TCP side's server list in line with etcd.

It talks to the runtime API over the stats socket (`stats socket ... level admin`), one
command per connection (non-interactive mode): `show servers state`, `add server`,
`enable server`, `set server <be>/<srv> state ready|drain|maint`, `set server ... weight`,
`del server`. HAProxy's weights are 0-256; node capacities are scaled into 1-256.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass

from cluster.host import DriverError

#: srv_admin_state bits (HAProxy src/server.h, enum srv_admin)
ADMF_MAINT = 0x01 | 0x02 | 0x04 | 0x20    # forced, inherited, config, resolution maintenance
ADMF_DRAIN = 0x08 | 0x10                  # forced or inherited drain
MAX_WEIGHT = 256


@dataclass(frozen=True, slots=True)
class ServerState:
    """One line of `show servers state`, the fields this driver uses."""

    name: str
    address: str
    port: int
    admin: str        # "ready" | "drain" | "maint"
    weight: int       # current (user) weight


@dataclass(frozen=True, slots=True)
class DesiredServer:
    """What a backend server should look like: one node."""

    name: str
    address: str
    port: int
    weight: int       # node capacity (scaled by the driver)
    drain: bool       # node is draining: keep existing connections, take no new ones


_OK = ("", "New server registered.", "Server deleted.")


class HAProxyRuntime:
    """A small client for HAProxy's runtime API on a UNIX (or TCP host:port) stats socket."""

    def __init__(self, address: str, timeout_s: float = 5.0) -> None:
        self.address = address
        self.timeout_s = timeout_s

    def command(self, line: str) -> str:
        """Send one command; return HAProxy's answer text (stripped)."""
        if "\n" in line or ";" in line:
            raise DriverError(f"one runtime command at a time: {line!r}")
        try:
            if self.address.startswith("/"):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                target: str | tuple[str, int] = self.address
            else:
                host, _, port = self.address.rpartition(":")
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                target = (host, int(port))
            with s:
                s.settimeout(self.timeout_s)
                s.connect(target)
                s.sendall(line.encode() + b"\n")
                chunks = []
                while chunk := s.recv(65536):
                    chunks.append(chunk)
        except (OSError, ValueError) as e:
            raise DriverError(f"haproxy runtime API at {self.address}: {e}") from None
        return b"".join(chunks).decode(errors="replace").strip()

    def checked(self, line: str) -> None:
        """Send a command whose only good answers are empty or a known acknowledgement."""
        answer = self.command(line)
        if answer not in _OK:
            raise DriverError(f"haproxy refused {line!r}: {answer.splitlines()[0]}")

    def servers(self, backend: str) -> dict[str, ServerState]:
        """`show servers state <backend>` parsed by its header line."""
        text = self.command(f"show servers state {backend}")
        lines = text.splitlines()
        if len(lines) < 2 or not lines[1].startswith("# "):
            raise DriverError(f"haproxy backend {backend!r}: {lines[0] if lines else 'no answer'}")
        header = lines[1][2:].split()
        out: dict[str, ServerState] = {}
        for line in lines[2:]:
            fields = dict(zip(header, line.split(), strict=False))
            try:
                admin_bits = int(fields["srv_admin_state"])
                admin = ("maint" if admin_bits & ADMF_MAINT
                         else "drain" if admin_bits & ADMF_DRAIN else "ready")
                st = ServerState(fields["srv_name"], fields["srv_addr"],
                                 int(fields["srv_port"]), admin, int(fields["srv_uweight"]))
            except (KeyError, ValueError):
                raise DriverError(f"haproxy: unreadable server line {line!r}") from None
            out[st.name] = st
        return out

    # the verbs ---------------------------------------------------------------------------
    def add_server(self, backend: str, name: str, address: str, port: int, weight: int) -> None:
        self.checked(f"add server {backend}/{name} {address}:{port} weight {weight}")

    def set_state(self, backend: str, name: str, state: str) -> None:
        if state not in ("ready", "drain", "maint"):
            raise DriverError(f"bad server state {state!r}")
        self.checked(f"set server {backend}/{name} state {state}")

    def set_weight(self, backend: str, name: str, weight: int) -> None:
        self.checked(f"set server {backend}/{name} weight {weight}")

    def del_server(self, backend: str, name: str) -> None:
        self.set_state(backend, name, "maint")
        self.checked(f"del server {backend}/{name}")


def scale_weights(capacities: Mapping[str, int]) -> dict[str, int]:
    """Node capacities → HAProxy weights 1..256, proportions kept (0 stays 0)."""
    top = max(capacities.values(), default=0)
    if top <= MAX_WEIGHT:
        return dict(capacities)
    return {n: (max(1, round(c * MAX_WEIGHT / top)) if c > 0 else 0)
            for n, c in capacities.items()}


class HAProxyDriver:
    """Keeps one HAProxy backend's servers equal to the cluster's nodes."""

    def __init__(self, runtime: HAProxyRuntime, backend: str) -> None:
        self.runtime = runtime
        self.backend = backend

    def sync(self, desired: Mapping[str, DesiredServer]) -> list[str]:
        """Add, update and remove servers; return what was done (for the log)."""
        rt, be = self.runtime, self.backend
        weights = scale_weights({n: d.weight for n, d in desired.items()})
        have = rt.servers(be)
        done: list[str] = []
        for name in sorted(have.keys() - desired.keys()):
            rt.del_server(be, name)
            done.append(f"del {name}")
        for name, d in sorted(desired.items()):
            cur = have.get(name)
            if cur is not None and (cur.address, cur.port) != (d.address, d.port):
                rt.del_server(be, name)
                done.append(f"del {name} (address changed)")
                cur = None
            if cur is None:
                rt.add_server(be, name, d.address, d.port, weights[name])
                done.append(f"add {name}")
            elif cur.weight != weights[name]:
                rt.set_weight(be, name, weights[name])
                done.append(f"weight {name} {weights[name]}")
            state = "drain" if d.drain else "ready"
            if cur is None or cur.admin != state:
                rt.set_state(be, name, state)
                done.append(f"{state} {name}")
        return done
