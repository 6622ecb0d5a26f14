"""A whole cluster on one machine: `Lab.up`, `Lab.open`, `Lab.down` and what lies between.

Namespaces (all named `<prefix><role>`, prefix `ipsc-<lab>_<random>-`):

    client-*  ──┐                      ┌── keyd-1..K   10.30.0.5+   (VIP on lo)
    nat ── 198.51.100.0/24 clients     ├── node-1..N   10.30.0.11+  (VIP on lo)
                ├─ br-front  router  br-back ─┤
    192.0.2.0/24┘  192.0.2.1   10.30.0.1      └── etcd    10.30.0.2:2379
                        │ 10.20.0.1
                      server 10.20.0.10 (ping, iperf3 -s)

Inner IPv6 (unique local, inside the lab only): server fd00:20::10 on fd00:20::/64, the back
end fd00:30::/64 (router ::1, node-i the host number of its IPv4 address), client IPv6
virtual addresses from fd00:99::/112. Outer traffic is IPv4.

The root namespace gets no lab address: it reaches etcd through a loopback forwarder.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from cluster.freeradius import FreeRadiusServer, RadiusUser
from cluster.host import DriverError, inside_netns
from cluster.lab import addresses as A
from cluster.lab import daemons, netns, strongswan, teardown, topology, vm
from cluster.lab.base import (
    Progress,
    _mutating,
    _quiet,
    _require_root,
    _require_tools,
    last_line,
)
from cluster.lab.clients import LabClients
from cluster.lab.errors import LabError
from cluster.lab.pki import EAP_USERS, write_secret
from cluster.lab.state import (
    LabState,
    ProcessRecord,
    check_name,
    labs_root,
)
from cluster.procs import EtcdServer, free_port
from cluster.xfrm.kernel import esp_missing

GATEWAYS = ("cluster", "strongswan")
IPERF_PORTS = (5201, 5202, 5203, 5204)
SPRAYER_TABLE = "ipsec_cluster"   # the nftables table the sprayer's kernel driver keeps


class Lab(LabClients):
    """A running (or half-built) lab, backed by its state.json."""

    # ---- life cycle ---------------------------------------------------------------------

    @classmethod
    def open(cls, name: str, progress: Progress = _quiet) -> Lab:
        return cls(LabState.load(check_name(name)), progress)

    @classmethod
    def up(cls, name: str = "lab", nodes: int = 3, keyd: int = 1, clients: int = 0,
           gateway: str = "cluster", progress: Progress = _quiet,
           save_logs_to: Path | None = None, hooks_dir: Path | None = None,
           radius: bool = False, etcd_members: int = 1, kernel_ipsec: bool = False,
           node_dataplane: str = "userspace") -> Lab:
        """Build the lab and return when it serves; on failure remove what was built (after
        copying its logs to save_logs_to, if given). With hooks_dir, cluster-hooks runs the
        executables there on cluster events (in the router's namespace). With radius, keyd
        relays EAP to a FreeRADIUS (EAP-TLS with lab client certificates, EAP-MSCHAPv2 with the
        lab's EAP users) on keyd-1's loopback; one keyd only. etcd_members 3: an etcd cluster
        of three members in the etcd namespace (docs/lab.md, "etcd"). With kernel_ipsec, the
        `clients` it adds keep their Child SAs in the kernel (LabClients.add_client).
        node_dataplane is the nodes' [node] dataplane (kernel: XFRM, which needs a kernel
        with ESP, e.g. the VM's)."""
        _require_root()
        check_name(name)
        _require_tools()
        if gateway not in GATEWAYS:
            raise LabError(f"unknown gateway {gateway!r}: one of {', '.join(GATEWAYS)}")
        if not 1 <= keyd <= A.MAX_KEYD:
            raise LabError(f"--keyd must be 1..{A.MAX_KEYD}")
        if not 0 <= nodes <= A.MAX_NODES:
            raise LabError(f"--nodes must be 0..{A.MAX_NODES}")
        if etcd_members not in A.ETCD_MEMBERS:
            raise LabError(f"--etcd-members must be one of {', '.join(map(str, A.ETCD_MEMBERS))}")
        _check_dataplane(node_dataplane)
        if radius and (gateway != "cluster" or keyd != 1):
            raise LabError("--radius needs the cluster gateway and one keyd")
        if kernel_ipsec and clients:
            why = strongswan.kernel_esp_missing()
            if why is not None:
                raise LabError(f"kernel-IPsec clients cannot run here: {why} (they run in "
                               "the VM: cluster/lab/vm.py, tests/kernel)")
        if hooks_dir is not None and (gateway != "cluster" or not hooks_dir.is_dir()):
            raise LabError(f"--hooks needs the cluster gateway and a directory: {hooks_dir}")
        if gateway == "cluster":
            # nodes=0 is a cluster without a data plane: IKE against keyd only.
            for d in (daemons.KEYD, daemons.SPRAYER, *([daemons.NODE] if nodes else []),
                      *([daemons.HOOKS] if hooks_dir else [])):
                why = d.missing()
                if why:
                    raise LabError(f"cannot start the cluster: {why} "
                                   "(`--gateway strongswan` runs a lab without it)")
        directory = labs_root() / name
        if directory.exists():
            raise LabError(f"lab {name!r} already exists ({directory}); "
                           f"run `clusterctl lab down --name {name}` first")
        directory.mkdir(parents=True, mode=0o700)
        state = LabState(name=name, prefix=f"ipsc-{name}_{secrets.token_hex(2)}-",
                         directory=str(directory), gateway=gateway,
                         nodes=nodes if gateway == "cluster" else 0, keyd=keyd,
                         radius=radius, etcd_members=etcd_members,
                         node_dataplane=node_dataplane)
        state.save()
        lab = cls(state, progress)
        try:
            lab._build(clients, hooks_dir.resolve() if hooks_dir else None, kernel_ipsec)
        except LabError as exc:
            progress("failed: removing what was built")
            lab.down(save_logs_to)
            if save_logs_to is not None:
                raise LabError(f"{exc} (logs: {save_logs_to})") from None
            raise
        except BaseException:
            progress("failed: removing what was built")
            lab.down(save_logs_to)
            raise
        return lab

    def _build(self, clients: int, hooks_dir: Path | None, kernel_ipsec: bool = False) -> None:
        s = self.state
        self.progress("generating PKI (CA, gateway certificate, PSK, data key)")
        self.pki.create()
        self.pki.issue("gateway", [A.GATEWAY_ID, A.VIP], server=True)
        self.progress("creating namespaces and links")
        topology.core(self._add_ns, s.keyd, s.nodes, baseline=s.gateway == "strongswan",
                      etcd_members=s.etcd_members)
        self.progress("starting etcd")
        self._start_etcd()
        self._start_server()
        if s.gateway == "strongswan":
            self.progress("starting the baseline gateway (strongSwan charon at the VIP)")
            self._start_baseline_gateway()
        else:
            self._start_cluster()
        if hooks_dir is not None:
            self._start_hooks(hooks_dir)
        for i in range(1, clients + 1):
            self.progress(f"adding client-{i}")
            self.add_client(f"client-{i}", kernel_ipsec=kernel_ipsec)
        s.ready = True
        s.save()
        self.progress("ready")

    # ---- etcd: one member, or a cluster of three in the etcd namespace --------------------

    def etcd_roles(self) -> list[str]:
        """The process roles of the etcd members: "etcd", or "etcd-1".."etcd-3"."""
        n = self.state.etcd_members
        return ["etcd"] if n == 1 else [f"etcd-{i}" for i in range(1, n + 1)]

    def _etcd_member(self, index: int) -> EtcdServer:
        roles = self.etcd_roles()
        peers = {role: f"http://{A.etcd_ip(i)}:{A.ETCD_PORT + 1}"
                 for i, role in enumerate(roles, 1)}
        return EtcdServer(self.dir / roles[index - 1], host=A.etcd_ip(index),
                          client_port=A.ETCD_PORT, peer_port=A.ETCD_PORT + 1,
                          netns=self.ns("etcd"), name=roles[index - 1],
                          initial_cluster=peers if len(roles) > 1 else None)

    def _start_etcd(self) -> None:
        ns = self.ns("etcd")
        for i, role in enumerate(self.etcd_roles(), 1):
            etcd = self._etcd_member(i)
            etcd.data_dir.mkdir(parents=True)
            self._spawn(role, etcd.argv(), ns)
        # Readiness is checked through the forwarder below, the way clusterctl will reach it.
        self.start_forwarder()
        self._wait("etcd answering through the loopback forwarder", self._etcd_answers, 30)

    def _daemon_common(self) -> daemons.Common:
        """The sections every daemon's configuration shares: its etcd endpoints list every
        member."""
        return daemons.Common(self.name, self.pki.data_key_file, self.dir / "logs",
                              tuple(A.etcd_endpoints(self.state.etcd_members)))

    def start_forwarder(self, attempts: int = 5) -> None:
        """The root namespace's loopback port into etcd (a free port, taken by the time the
        forwarder binds it now and then: then another). With three members, each connection
        goes to the first member that accepts it."""
        targets = [arg for i in range(1, self.state.etcd_members + 1)
                   for arg in ("--target", f"{A.etcd_ip(i)}:{A.ETCD_PORT}")]
        for _ in range(attempts):
            self.state.etcd_port = free_port()
            rec = self._spawn("forwarder", [
                sys.executable, "-m", "cluster.lab.forwarder",
                "--listen", f"127.0.0.1:{self.state.etcd_port}", "--netns", self.ns("etcd"),
                *targets], None)
            deadline = time.monotonic() + vm.patient(10)
            while rec.alive() and time.monotonic() < deadline:
                if _listens(self.state.etcd_port):
                    return
                time.sleep(0.05)
        raise LabError(f"the etcd forwarder did not start (see {rec.log})")

    def _etcd_answers(self) -> bool:
        """etcd serves through the forwarder: one member answers; a cluster has a leader."""
        for role in self.etcd_roles():
            self._alive(role)
        self._alive("forwarder")
        path = "version" if self.state.etcd_members == 1 else "health"
        try:
            r = requests.get(f"{self.etcd_endpoint}/{path}", timeout=2)
            return r.ok and (path == "version" or r.json().get("health") == "true")
        except (requests.RequestException, ValueError):
            return False

    def _respawn_etcd_member(self, role: str, ready: Callable[[], bool],
                             watch_s: float, attempts: int = 10) -> None:
        """Start a member of a three-member etcd again and watch it until ready() or for
        watch_s. Its peer port can still be taken for a moment after the member was killed
        (the three share the namespace, and the other two keep connecting to it): etcd then
        exits at once with "address already in use", and it is started again after a pause."""
        rec = self.state.processes[role]
        for _ in range(attempts):
            new = self._spawn(role, rec.argv, rec.netns)
            deadline = time.monotonic() + watch_s
            while new.alive() and not ready() and time.monotonic() < deadline:
                time.sleep(0.1)
            if new.alive():
                return
            last = last_line(Path(new.log))
            if "address already in use" not in last:
                raise LabError(f"{role} exited (its output: {Path(new.log).name}: {last})")
            time.sleep(0.5)
        raise LabError(f"{role} could not bind its ports in {attempts} starts "
                       f"(its output: {Path(rec.log).name})")

    def _etcd_member_healthy(self, role: str, quiet: bool = False) -> bool:
        """etcd member `role` runs and answers /health itself (it is back in the cluster); if
        it does not run: LabError (quiet: False)."""
        if quiet and not self.state.processes[role].alive():
            return False
        self._alive(role)
        index = self.etcd_roles().index(role) + 1
        url = f"http://{A.etcd_ip(index)}:{A.ETCD_PORT}/health"
        try:
            with inside_netns(self.ns("etcd")):
                r = requests.get(url, timeout=2)
            return r.ok and r.json().get("health") == "true"
        except (requests.RequestException, ValueError, DriverError):
            return False

    # ---- processes ------------------------------------------------------------------------

    def _start_server(self) -> None:
        """iperf3 servers on 5201.. (one test at a time each, so several for parallel runs)."""
        ns = self.ns("server")
        for port in IPERF_PORTS:
            self._spawn(f"server-iperf3-{port}",
                        netns.exec_argv(ns, ["iperf3", "-s", "-p", str(port)]), ns)

    def _start_baseline_gateway(self) -> None:
        ns = self.ns("keyd-1")
        # kernel-libipsec routes a client's virtual IP into its TUN with a source address
        # from the local traffic selector, so the gateway needs one inside the protected
        # network, as a gateway standing on that network has.
        netns.address(ns, "lo", f"{A.GATEWAY_INSIDE}/32")
        conf_dir = self.dir / "gateway"
        conf_dir.mkdir()
        (conf_dir / "strongswan.conf").write_text(
            strongswan.strongswan_conf(self.dir / "logs" / "gateway-charon.log"))
        swanctl_conf = strongswan.swanctl_dir(conf_dir, strongswan.gateway_swanctl_conf(
            self.pki.psk(), self.pki.cert("gateway"), self.pki.ca_cert,
            [(u, self.pki.eap_password()) for u in EAP_USERS]),
            self.pki.key("gateway"))
        rec = self._spawn("gateway", strongswan.charon_argv(ns, conf_dir / "strongswan.conf"), ns)
        strongswan.wait_vici(rec.pid)
        strongswan.load(rec.pid, swanctl_conf)

    def _start_radius(self) -> tuple[str, Path]:
        """FreeRADIUS on keyd-1's loopback: its server certificate is the gateway's (a
        strongSwan EAP-TLS client expects the gateway's identity from the EAP server), its
        users the lab's EAP users. Returns (address:port, shared secret file) for keyd."""
        self.progress("starting FreeRADIUS")
        secret = secrets.token_urlsafe(16)
        secret_file = self.pki.directory / "radius-secret"
        write_secret(secret_file, (secret + "\n").encode())
        users = [RadiusUser(u, self.pki.eap_password()) for u in EAP_USERS]
        server = FreeRadiusServer(self.dir / "radius", users, secret, port=1812, eap_tls={
            "cert": self.pki.cert("gateway"), "key": self.pki.key("gateway"),
            "ca": self.pki.ca_cert})
        server.write_config()
        ns = self.ns("keyd-1")
        rec = self._spawn("radius", netns.exec_argv(ns, server.argv()), ns)
        self._wait("FreeRADIUS ready", lambda: FreeRadiusServer.ready(Path(rec.log)), 20)
        return f"127.0.0.1:{server.port}", secret_file

    def _start_cluster(self) -> None:
        common = self._daemon_common()
        conf = self.dir / "config"
        conf.mkdir()
        radius = self._start_radius() if self.state.radius else None
        for i in range(1, self.state.keyd + 1):
            self.progress(f"starting keyd-{i}")
            path = conf / f"keyd-{i}.toml"
            path.write_text(daemons.keyd_config(
                common, i, self.pki.secrets_file, self.pki.cert("gateway"),
                self.pki.key("gateway"), self.pki.ca_cert, radius))
            self._spawn(f"keyd-{i}", netns.exec_argv(self.ns(f"keyd-{i}"),
                                                     daemons.KEYD.argv(path)), self.ns(f"keyd-{i}"))
        for i in range(1, self.state.nodes + 1):
            self.progress(f"starting node-{i}")
            path = conf / f"node-{i}.toml"
            path.write_text(daemons.node_config(common, i, self.state.node_dataplane))
            self._spawn(f"node-{i}", netns.exec_argv(self.ns(f"node-{i}"),
                                                     daemons.NODE.argv(path)), self.ns(f"node-{i}"))
        self.progress("starting the sprayer")
        path = conf / "sprayer.toml"
        path.write_text(daemons.sprayer_config(common, self.state.keyd))
        self._spawn("sprayer", netns.exec_argv(self.ns("router"), daemons.SPRAYER.argv(path)),
                    self.ns("router"))
        for i in range(1, self.state.keyd + 1):
            self.progress(f"waiting for keyd-{i} to answer IKE")
            self._wait(f"keyd-{i} listening on {A.VIP}:500 and registered in etcd",
                       functools.partial(self._registered, f"keyd-{i}", "keyd", 500), 30)
        for i in range(1, self.state.nodes + 1):
            self.progress(f"waiting for node-{i} to be ready")
            self._wait(f"node-{i} listening on {A.VIP}:4500 and ready in etcd",
                       functools.partial(self._registered, f"node-{i}", "nodes", 4500), 30)
        self.progress("waiting for the sprayer to apply its rules")
        self._wait("the sprayer's nftables table in the router",
                   lambda: self._alive("sprayer") and self._nft_applied(), 30)

    def _registered(self, role: str, kind: str, port: int) -> bool:
        """role's daemon runs, has bound VIP:port, and holds its record in etcd (a node: in
        state ready)."""
        if not self._alive_and_bound(role, port):
            return False
        record = self.etcd_json(f"{kind}/{role}")
        return record is not None and (kind != "nodes" or record.get("state") == "ready")

    def etcd_json(self, key: str) -> dict[str, Any] | None:
        """The JSON value of `<prefix>/<lab>/<key>` (None when absent or not JSON)."""
        import etcd3  # the lab works without it until a cluster is started

        client = etcd3.client(host="127.0.0.1", port=self.state.etcd_port, timeout=5)
        try:
            value, _ = client.get(f"/ipsec-cluster/{self.name}/{key}")
        except Exception:  # etcd3 raises many kinds; "not there yet" is all that matters
            return None
        finally:
            client.close()
        if value is None:
            return None
        try:
            decoded = json.loads(value)
        except ValueError:
            return None
        return decoded if isinstance(decoded, dict) else None

    def _start_hooks(self, directory: Path) -> None:
        self.progress(f"starting cluster-hooks on {directory}")
        common = self._daemon_common()
        path = self.dir / "config" / "hooks.toml"
        path.write_text(daemons.hooks_config(common, directory, self.dir / "hooks.revision"))
        rec = self._spawn("hooks", netns.exec_argv(self.ns("router"),
                                                   daemons.HOOKS.argv(path)), self.ns("router"))
        # It starts from the revision current when its watch begins (no saved revision yet):
        # events before that line in its log would not reach the hooks.
        self._wait("cluster-hooks to watch the keyspace",
                   lambda: self._alive("hooks") and "watching " in Path(rec.log).read_text(
                       errors="replace"), 30)

    def listening(self, member: str, port: int) -> bool:
        """member's daemon runs and something in its namespace has bound UDP `port`."""
        return self._alive_and_bound(self._process_role(member), port)

    def _alive_and_bound(self, role: str, port: int) -> bool:
        self._alive(role)
        ns = self.state.processes[role].netns or self.ns(role)
        out = netns.in_ns(ns, ["ss", "-Hlun", f"sport = :{port}"], check=False)
        return bool(out.stdout.strip())

    def _nft_applied(self) -> bool:
        out = netns.in_ns(self.ns("router"), ["nft", "list", "tables"], check=False)
        return any(line.split()[-1] == SPRAYER_TABLE for line in out.stdout.splitlines()
                   if line.strip())

    # ---- members: exec, kill, start -------------------------------------------------------

    def members(self) -> dict[str, str]:
        """Every name `exec` accepts, with its namespace."""
        names = {role: self.ns(role) for role in ("router", "server", "etcd")}
        if self.ns("nat") in self.state.namespaces:
            names["nat"] = self.ns("nat")
        for i in range(1, self.state.keyd + 1):
            names[f"keyd-{i}"] = self.ns(f"keyd-{i}")
        for i in range(1, self.state.nodes + 1):
            names[f"node-{i}"] = self.ns(f"node-{i}")
        for c in self.state.clients.values():
            names[c.name] = c.netns
        return names

    def exec_argv(self, member: str, argv: list[str]) -> list[str]:
        """argv that runs inside member's namespace (a client's: with its charon's /run)."""
        ns = self.members().get(member)
        if ns is None:
            raise LabError(f"no member {member!r} in lab {self.name!r} "
                           f"(one of: {', '.join(self.members())})")
        rec = self.state.processes.get(f"client:{member}")
        if rec is not None and rec.alive():
            return strongswan.in_charon(rec.pid, argv)
        return netns.exec_argv(ns, argv)

    @_mutating
    def spawn_in(self, member: str, role: str, argv: list[str]) -> ProcessRecord:
        """Start argv in the background in member's namespace, recorded as `role` (so `kill`
        and `down` know it); its output goes to logs/<role>.log."""
        if role in self.state.processes and self.state.processes[role].alive():
            raise LabError(f"{role} is already running")
        return self._spawn(role, self.exec_argv(member, argv), self.members()[member])

    def ping(self, member: str, count: int = 3, settle_s: float = 0.0) -> bool:
        """member gets `count` answers in a row from the protected server — after a first
        answer, waited for up to settle_s (a new client is steered within a moment)."""
        deadline = time.monotonic() + settle_s
        while self.run(member, ["ping", "-c", "1", "-W", "1", A.SERVER_IP]).returncode != 0:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)
        r = self.run(member, ["ping", "-c", str(count), "-i", "0.2", "-W", "2", A.SERVER_IP])
        return r.returncode == 0 and f" {count} received" in r.stdout

    def run(self, member: str, argv: list[str], check: bool = False,
            timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run argv in member's namespace and wait for it (see exec_argv)."""
        return netns.run(self.exec_argv(member, argv), check=check, timeout_s=timeout_s)

    def _process_role(self, member: str) -> str:
        if member in self.state.clients:
            return f"client:{member}"
        if member == "keyd-1" and self.state.gateway == "strongswan":
            return "gateway"
        if member in self.state.processes and member != "forwarder":
            return member
        raise LabError(f"no process named {member!r} in lab {self.name!r} (one of: "
                       f"{', '.join(self._killable())})")

    def _killable(self) -> list[str]:
        roles = [r for r in self.state.processes
                 if r != "forwarder" and not r.startswith("server-iperf3")]
        return [r.removeprefix("client:") for r in roles]

    @_mutating
    def kill(self, member: str, sig: signal.Signals = signal.SIGTERM) -> int:
        """Signal member's daemon; for TERM/KILL wait until it is gone. Returns its PID.
        With three etcd members, "etcd" is all of them (the whole store; the first's PID)
        and "etcd-N" one."""
        if member == "etcd" and self.state.etcd_members > 1:
            pids = [self.kill(role, sig) for role in self.etcd_roles()
                    if self.state.processes[role].alive()]
            if not pids:
                raise LabError("etcd is not running (no member is)")
            return pids[0]
        rec = self.state.processes[self._process_role(member)]
        if not rec.alive():
            raise LabError(f"{member} is not running")
        try:
            os.killpg(rec.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            os.kill(rec.pid, sig)
        if sig in (signal.SIGTERM, signal.SIGKILL, signal.SIGINT):
            self._wait(f"{member} (pid {rec.pid}) to exit", lambda: teardown.reaped(rec), 10)
        return rec.pid

    @_mutating
    def start(self, member: str) -> int:
        """Start member's daemon again with the argv it had; returns the new PID once it
        serves (a client: once it has connected again). With three etcd members, "etcd" starts
        every member that is down and returns (the first's PID) once the cluster has a leader;
        "etcd-N" returns once that member is back in the cluster."""
        if member == "etcd" and self.state.etcd_members > 1:
            for role in self.etcd_roles():
                if not self.state.processes[role].alive():  # none is ready before a quorum
                    self._respawn_etcd_member(role, lambda: False, watch_s=1.0)
            self._wait("etcd answering", self._etcd_answers, 30)
            return self.state.processes[self.etcd_roles()[0]].pid
        if member.startswith("etcd-") and member in self.etcd_roles():
            if self.state.processes[member].alive():
                raise LabError(f"{member} is already running "
                               f"(pid {self.state.processes[member].pid})")
            self._respawn_etcd_member(
                member, functools.partial(self._etcd_member_healthy, member, quiet=True), 30.0)
            self._wait_started(member)
            return self.state.processes[member].pid
        role = self._process_role(member)
        rec = self.state.processes[role]
        if rec.alive():
            raise LabError(f"{member} is already running (pid {rec.pid})")
        if role.startswith("client:"):
            self._connect_client(self.state.clients[member])
        elif role == "gateway":
            self._spawn(role, rec.argv, rec.netns)
            strongswan.wait_vici(self.state.processes[role].pid)
            strongswan.load(self.state.processes[role].pid,
                            self.dir / "gateway" / "swanctl.conf")
        else:
            self._spawn(role, rec.argv, rec.netns)
            self._wait_started(role)
        return self.state.processes[role].pid

    def _wait_started(self, role: str, timeout_s: float = 30.0) -> None:
        """Until a restarted daemon serves its socket (not its etcd record: a daemon may be
        started while etcd is away, and serve from what it holds)."""
        if role == "etcd":
            self._wait("etcd answering", self._etcd_answers, timeout_s)
        elif role.startswith("etcd-"):
            self._wait(f"{role} back in the etcd cluster",
                       functools.partial(self._etcd_member_healthy, role), timeout_s)
        elif role.startswith("keyd-"):
            self._wait(f"{role} listening on {A.VIP}:500",
                       functools.partial(self._alive_and_bound, role, 500), timeout_s)
        elif role.startswith("node-"):
            self._wait(f"{role} listening on {A.VIP}:4500",
                       functools.partial(self._alive_and_bound, role, 4500), timeout_s)
        else:
            time.sleep(0.3)
            self._alive(role)

    # ---- status ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The lab as JSON (the schema `clusterctl lab status -o json` prints)."""
        s = self.state

        def proc(role: str) -> dict[str, Any]:
            rec = s.processes.get(role)
            config = self.dir / "config" / f"{role}.toml"
            return {"pid": rec.pid if rec else None, "alive": bool(rec and rec.alive()),
                    "log": rec.log if rec else None,
                    "config": str(config) if config.exists() else None}

        return {
            "name": s.name, "ready": s.ready, "gateway": s.gateway, "prefix": s.prefix,
            "directory": s.directory, "cluster": s.name, "key_prefix": f"/ipsec-cluster/{s.name}/",
            "vip": A.VIP, "gateway_id": A.GATEWAY_ID,
            # where the PSK is and a fingerprint to tell two apart, never the PSK itself
            "psk_file": str(self.pki.psk_file),
            "psk_fingerprint": (self.pki.psk_fingerprint() if self.pki.psk_file.exists()
                                else None),
            "ca_cert": str(self.pki.ca_cert),
            "ca_key": str(self.pki.ca_key), "data_key_file": str(self.pki.data_key_file),
            "protected_network": A.PROTECTED_NETWORK, "server_ip": A.SERVER_IP,
            "protected_network6": A.PROTECTED_NETWORK6, "server_ip6": A.SERVER_IP6,
            "pool6": A.POOL6,
            "front_network": A.FRONT_NETWORK, "front_router": A.FRONT_ROUTER,
            "back_network": A.BACK_NETWORK, "pool": A.POOL, "nat_network": A.NAT_NETWORK,
            "etcd_endpoints": [self.etcd_endpoint] if s.etcd_port else [],
            "etcd_endpoints_in_lab": A.etcd_endpoints(s.etcd_members),
            "router": {"namespace": self.ns("router"), "front": A.FRONT_ROUTER,
                       "back": A.BACK_ROUTER, "protected": A.PROTECTED_ROUTER},
            "sprayer": {"namespace": self.ns("router"), **proc("sprayer")},
            "hooks": {"namespace": self.ns("router"), **proc("hooks")}
            if "hooks" in s.processes else None,
            "server": {"namespace": self.ns("server"), "address": A.SERVER_IP},
            "etcd": {"namespace": self.ns("etcd"), "address": A.ETCD_IP,
                     **proc(self.etcd_roles()[0])},
            "etcd_members": [{"name": role, "namespace": self.ns("etcd"),
                              "address": A.etcd_ip(i), **proc(role)}
                             for i, role in enumerate(self.etcd_roles(), 1)],
            "keyd": [{"name": f"keyd-{i}", "namespace": self.ns(f"keyd-{i}"),
                      "address": A.keyd_ip(i),
                      **proc("gateway" if s.gateway == "strongswan" else f"keyd-{i}")}
                     for i in range(1, s.keyd + 1)],
            "nodes": [{"name": f"node-{i}", "namespace": self.ns(f"node-{i}"),
                       "address": A.node_ip(i), **proc(f"node-{i}")}
                      for i in range(1, s.nodes + 1)],
            "clients": [{"name": c.name, "namespace": c.netns, "address": c.address,
                         "identity": c.identity, "auth": c.auth, "behind_nat": c.behind_nat,
                         "ike": c.ike, **proc(f"client:{c.name}")}
                        for c in s.clients.values()],
        }

    # ---- down ---------------------------------------------------------------------------

    def down(self, save_logs_to: Path | None = None) -> None:
        """Stop every process, delete every namespace, remove every file of this lab; with
        save_logs_to, its logs and configuration are copied there first (keys excluded)."""
        teardown.teardown(netns.listed(self.state.prefix), list(self.state.processes.values()))
        if save_logs_to is not None:
            teardown.save_logs(self.dir, save_logs_to)
        self.state.remove_files()


def _listens(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def down(name: str, save_logs_to: Path | None = None) -> bool:
    """Remove lab `name`; also works when its state is gone or unreadable. True if anything
    was found."""
    _require_root()
    check_name(name)
    try:
        Lab.open(name).down(save_logs_to)
        return True
    except LabError:
        pass
    # No usable state: find the lab's namespaces by name (`_` never occurs in a lab name).
    found = False
    root = netns.NETNS_DIR
    if root.is_dir():
        for p in root.iterdir():
            head, sep, tail = p.name.partition("_")
            if sep and head == f"ipsc-{name}" and len(tail) > 5 and tail[4] == "-":
                teardown.teardown(netns.listed(f"{head}_{tail[:5]}"), [])
                found = True
    directory = labs_root() / name
    if directory.exists():
        shutil.rmtree(directory, ignore_errors=True)
        found = True
    return found


def list_labs() -> list[str]:
    root = labs_root()
    return sorted(p.name for p in root.iterdir() if (p / "state.json").exists()) \
        if root.is_dir() else []


#: the node's [node] dataplane values (cluster.node.config)
DATAPLANES = ("userspace", "kernel", "auto")


def _check_dataplane(dataplane: str) -> None:
    if dataplane not in DATAPLANES:
        raise LabError(f"unknown node dataplane {dataplane!r}: one of {', '.join(DATAPLANES)}")
    if dataplane == "kernel":
        why = esp_missing(A.VIP)
        if why is not None:
            raise LabError(f"--node-dataplane kernel: this kernel cannot carry ESP ({why}); "
                           "run the lab in the VM (cluster.lab.vm)")
