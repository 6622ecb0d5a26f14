"""The Ansible deployment: lint, syntax, and converge runs that render every file.

The converge runs use the example inventory (3 etcd, 2 keyd, 3 nodes, 2 sprayers, a hook runner
on sprayer-1) with
`connection: local` and `ipsec_cluster_render_only`, each host rendering into its own
directory under a temporary root: nothing on this machine is installed, started or changed.
The rendered configuration is read back by the daemons' own loaders, the rendered etcd
users-and-roles script is run against a real etcd with TLS, and (as root) a lab cluster is
restarted from configuration files the playbook rendered and carries a strongSwan client.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

from cluster.config import load_config
from cluster.procs import EtcdServer

if TYPE_CHECKING:
    from cluster.lab.lab import Lab

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
INVENTORY = ANSIBLE_DIR / "inventories" / "example"
BIN = Path(sys.executable).parent
PLAYBOOKS = ("site.yml", "rolling-upgrade.yml", "add-node.yml")
TIMEOUT_S = 600

ETCD = ("etcd-1", "etcd-2", "etcd-3")
KEYD = ("keyd-1", "keyd-2")
NODES = ("node-1", "node-2", "node-3")
SPRAYERS = ("sprayer-1", "sprayer-2")
HOOKS = ("sprayer-1",)
DAEMON = {**dict.fromkeys(KEYD, "keyd"), **dict.fromkeys(NODES, "cluster-node"),
          **dict.fromkeys(SPRAYERS, "sprayer")}
# Every (host, daemon) deployed; the hook runner shares sprayer-1.
DEPLOYED = [*DAEMON.items(), *((h, "cluster-hooks") for h in HOOKS)]
SECTION = {"keyd": "keyd", "cluster-node": "node", "sprayer": "sprayer",
           "cluster-hooks": "hooks"}


def etcd_user(host: str, daemon: str) -> str:
    """The etcd user (certificate CN) of a daemon: its host, or <host>-hooks for the runner."""
    return f"{host}-hooks" if daemon == "cluster-hooks" else host


def ansible_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
        "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-tmp"),
        "ANSIBLE_REMOTE_TEMP": str(tmp / "ansible-tmp"),
        "ANSIBLE_FORKS": "10",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    })
    return env


def run(argv: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ANSIBLE_DIR, env=ansible_env(tmp), capture_output=True,
                          text=True, timeout=TIMEOUT_S, check=False)


@dataclass
class Converge:
    tmp: Path
    root: Path
    credentials: Path

    def argv(self, playbook: str, *extra: str, inventory: Path = INVENTORY / "hosts.yml",
             ) -> list[str]:
        return [
            str(BIN / "ansible-playbook"), "-i", str(inventory), playbook,
            "-e", "ipsec_cluster_render_only=true",
            "-e", f"ipsec_cluster_root={self.root}/{{{{ inventory_hostname }}}}",
            "-e", f"ipsec_cluster_credentials_dir={self.credentials}",
            "-e", "ansible_connection=local",
            "-e", f'{{"ansible_python_interpreter": "{sys.executable}"}}',
            *extra,
        ]

    def playbook(self, playbook: str, *extra: str,
                 inventory: Path = INVENTORY / "hosts.yml") -> subprocess.CompletedProcess[str]:
        return run(self.argv(playbook, *extra, inventory=inventory), self.tmp)

    def start(self, playbook: str, *extra: str,
              inventory: Path = INVENTORY / "hosts.yml") -> Started:
        """The same run, in the background."""
        return Started(self.argv(playbook, *extra, inventory=inventory),
                       self.tmp / f"run-{secrets.token_hex(3)}")

    def host(self, name: str) -> Path:
        return self.root / name


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP lines: host → {ok: n, changed: n, failed: n, ...}."""
    hosts: dict[str, dict[str, int]] = {}
    for line in output.split("PLAY RECAP", 1)[-1].splitlines():
        m = re.match(r"^(\S+)\s+:\s+(.*)$", line)
        if m:
            hosts[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return hosts


def assert_ran(done: subprocess.CompletedProcess[str]) -> dict[str, dict[str, int]]:
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    result = recap(done.stdout)
    assert result, done.stdout[-2000:]
    assert all(r["failed"] == 0 and r["unreachable"] == 0 for r in result.values())
    return result


class Started:
    """An Ansible command running in the background (its own session); `result()` waits."""

    def __init__(self, argv: list[str], tmp: Path) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.out, self.err = tmp / "stdout", tmp / "stderr"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(argv, cwd=ANSIBLE_DIR, env=ansible_env(tmp),
                                         stdout=out, stderr=err, text=True,
                                         start_new_session=True)

    def result(self) -> subprocess.CompletedProcess[str]:
        returncode = self.proc.wait(TIMEOUT_S)
        return subprocess.CompletedProcess(self.proc.args, returncode, self.out.read_text(),
                                           self.err.read_text())

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@dataclass
class Runs:
    """What the converge tests look at. ansible-lint and the syntax check start first and
    run while the first converge does; once it is done, the second run of site.yml and the
    add-node run (into its own root) run side by side. Every check is still made, on the
    machine's cores at once rather than one after the other."""

    converge: Converge
    lint: Started
    syntax: Started
    second: Started | None = None
    add_node: Started | None = None
    add_node_converge: Converge | None = None
    add_node_ca_before: bytes = b""


def add_node_inventory(tmp: Path) -> Path:
    """The example inventory plus node-4 in `nodes`."""
    inventory = tmp / "inventory"
    shutil.copytree(INVENTORY, inventory, ignore=shutil.ignore_patterns("credentials"))
    hosts = yaml.safe_load((inventory / "hosts.yml").read_text())
    hosts["all"]["children"]["ipsec_cluster"]["children"]["nodes"]["hosts"]["node-4"] = None
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))
    (inventory / "host_vars" / "node-4.yml").write_text(
        "---\nansible_host: 10.30.0.14\nipsec_cluster_address: 10.30.0.14\n")
    return inventory / "hosts.yml"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    tmp = tmp_path_factory.mktemp("ansible")
    r = Runs(Converge(tmp, tmp / "root", tmp / "credentials"),
             Started([str(BIN / "ansible-lint"), "--offline", "--profile", "production",
                      "--nocolor"], tmp / "lint"),
             Started([str(BIN / "ansible-playbook"), "--syntax-check", *PLAYBOOKS],
                     tmp / "syntax"))
    try:
        result = assert_ran(r.converge.playbook("site.yml"))
        assert set(result) == {*ETCD, *KEYD, *NODES, *SPRAYERS, *HOOKS}
        r.second = r.converge.start("site.yml")
        add = tmp / "add-node"
        add.mkdir()
        inventory = add_node_inventory(add)
        r.add_node_converge = Converge(add, add / "root", add / "credentials")
        shutil.copytree(r.converge.credentials, r.add_node_converge.credentials)
        r.add_node_ca_before = (r.add_node_converge.credentials / "etcd" / "ca.pem").read_bytes()
        r.add_node = r.add_node_converge.start("add-node.yml", "-e", "new_node=node-4",
                                               inventory=inventory)
        yield r
    finally:
        for started in (r.lint, r.syntax, r.second, r.add_node):
            if started is not None:
                started.stop()


@pytest.fixture(scope="module")
def converged(runs: Runs) -> Converge:
    return runs.converge


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def doc_contract() -> dict[str, dict[str, object]]:
    """Every TOML block of docs/configuration.md, merged: section → documented keys."""
    text = (REPO / "docs" / "configuration.md").read_text()
    merged: dict[str, dict[str, object]] = {}
    for block in re.findall(r"```toml\n(.*?)```", text, re.S):
        for section, table in tomllib.loads(block).items():
            merged.setdefault(section, {}).update(table)
    return merged


# -- converge --------------------------------------------------------------------------------

def test_every_file_is_rendered_with_its_mode(converged: Converge) -> None:
    credentials: dict[str, set[str]] = {}
    for host, daemon in DEPLOYED:
        etc = converged.host(host) / "etc" / "ipsec-cluster"
        user = etcd_user(host, daemon)
        expected = {
            etc / f"{daemon}.toml": 0o640,
            etc / "etcd" / "ca.pem": 0o644,
            etc / "etcd" / f"{user}.pem": 0o644,
            etc / "etcd" / f"{user}-key.pem": 0o600,
            converged.host(host) / "etc" / "systemd" / "system" / f"{daemon}.service": 0o644,
        }
        if daemon != "cluster-hooks":
            expected[etc / "data.key"] = 0o600
        if daemon == "keyd":
            expected[etc / "psk"] = 0o600
        if daemon == "cluster-hooks":
            assert mode(etc / "hooks.d") == 0o750
            expected[etc / "hooks.d" / "50-log"] = 0o750      # group_vars/hooks.yml
            assert (etc / "hooks.d" / "50-log").read_bytes() == \
                (INVENTORY / "files" / "hooks.d" / "50-log").read_bytes()
        for path, want in expected.items():
            assert path.is_file(), path
            assert mode(path) == want, (path, oct(mode(path)))
        credentials.setdefault(host, {"ca.pem"}).update({f"{user}.pem", f"{user}-key.pem"})
    for host, names in credentials.items():
        # Only this host's own credentials.
        etcd_dir = converged.host(host) / "etc" / "ipsec-cluster" / "etcd"
        assert sorted(p.name for p in etcd_dir.iterdir()) == sorted(names)
    assert credentials["sprayer-1"] == {"ca.pem", "sprayer-1.pem", "sprayer-1-key.pem",
                                        "sprayer-1-hooks.pem", "sprayer-1-hooks-key.pem"}
    for host in ETCD:
        pki = converged.host(host) / "etc" / "etcd" / "pki"
        for name, want in (("ca.pem", 0o644), (f"{host}.pem", 0o644),
                           (f"{host}-key.pem", 0o600), ("root.pem", 0o644),
                           ("root-key.pem", 0o600)):
            assert mode(pki / name) == want, pki / name
        assert (converged.host(host) / "etc" / "default" / "etcd").is_file()
        rbac = converged.host(host) / "usr" / "local" / "sbin" / "ipsec-cluster-etcd-rbac"
        assert mode(rbac) == 0o700
    # The controller keeps the secrets private too.
    assert mode(converged.credentials / "data.key") == 0o600
    assert mode(converged.credentials / "etcd" / "ca-key.pem") == 0o600


def test_every_host_shares_one_data_key_and_ca(converged: Converge) -> None:
    keys = {(converged.host(h) / "etc/ipsec-cluster/data.key").read_text() for h in DAEMON}
    assert len(keys) == 1
    assert re.fullmatch(r"[0-9a-f]{64}\n", keys.pop())
    cas = {(converged.host(h) / "etc/ipsec-cluster/etcd/ca.pem").read_bytes() for h in DAEMON}
    cas |= {(converged.host(h) / "etc/etcd/pki/ca.pem").read_bytes() for h in ETCD}
    assert len(cas) == 1


def test_configuration_follows_the_documented_contract(converged: Converge) -> None:
    contract = doc_contract()
    optional = {"keyd": {"cert_file", "key_file", "ca_file", "secrets_file", "connections",
                         "eap", "eap_identity", "eap_users_file", "radius_servers",
                         "radius_secret_file", "radius_timeout_s", "radius_tries",
                         "nas_identifier", "pool6"},
                "node": {"address6"},
                "sprayer": {"haproxy_socket", "haproxy_backend", "netns"}}
    for host, daemon in DEPLOYED:
        path = converged.host(host) / "etc" / "ipsec-cluster" / f"{daemon}.toml"
        rendered = tomllib.loads(path.read_text())
        own = SECTION[daemon]
        assert set(rendered) == {"cluster", "etcd", "log", "metrics", own}, path
        # cluster-hooks reads public fields only: no data key (docs/operator-guide.md).
        hooks_optional = {"cluster": {"data_key_file"}} if daemon == "cluster-hooks" else {}
        for section, table in rendered.items():
            documented = set(contract[section])
            assert set(table) <= documented, (path, section, set(table) - documented)
            missing = (documented - set(table) - optional.get(section, set())
                       - hooks_optional.get(section, set()))
            assert not missing, (path, section, missing)
        if daemon == "cluster-hooks":
            assert "data_key_file" not in rendered["cluster"]
            assert rendered["metrics"]["listen"] == "127.0.0.1:9411"   # not the sprayer's
        else:
            assert rendered[own]["id"] == host
            assert rendered["metrics"]["listen"] == "127.0.0.1:9410"
        user = etcd_user(host, daemon)
        assert rendered["etcd"]["cert"] == f"/etc/ipsec-cluster/etcd/{user}.pem"
        assert rendered["etcd"]["key"] == f"/etc/ipsec-cluster/etcd/{user}-key.pem"
        assert rendered["etcd"]["endpoints"] == [
            "https://10.10.0.11:2379", "https://10.10.0.12:2379", "https://10.10.0.13:2379"]
        assert rendered["cluster"]["name"] == "prod"


def test_daemons_accept_their_rendered_configuration(converged: Converge) -> None:
    from cluster.hooks.main import settings_from as hooks_settings_from
    from cluster.hooks.runner import HooksSettings
    from cluster.node.config import load_node_config
    from keyd.config import load_config as load_keyd_config
    from sprayer.settings import settings_from

    for host in KEYD:
        keyd = load_keyd_config(converged.host(host) / "etc/ipsec-cluster/keyd.toml")
        assert keyd.keyd.id == host
        assert keyd.keyd.vip == "203.0.113.10"
    capacities = {}
    for host in NODES:
        node = load_node_config(converged.host(host) / "etc/ipsec-cluster/cluster-node.toml")
        capacities[host] = node.node.capacity
    assert capacities == {"node-1": 100, "node-2": 100, "node-3": 200}  # host_vars/node-3.yml
    for host in SPRAYERS:
        sprayer = settings_from(load_config(
            converged.host(host) / "etc/ipsec-cluster/sprayer.toml"))
        assert sprayer.id == host
        assert sprayer.keyd == ["10.30.0.5", "10.30.0.6"]
    for host in HOOKS:
        hooks = hooks_settings_from(load_config(
            converged.host(host) / "etc/ipsec-cluster/cluster-hooks.toml"))
        assert hooks == HooksSettings(
            directory=Path("/etc/ipsec-cluster/hooks.d"), webhooks=[], timeout_s=10.0,
            retries=3, backoff_s=1.0, queue_size=1000,
            state_file=Path("/var/lib/ipsec-cluster/hooks.revision"))


def test_units_are_notify_with_a_watchdog(converged: Converge) -> None:
    for host, daemon in DEPLOYED:
        unit = (converged.host(host) / f"etc/systemd/system/{daemon}.service").read_text()
        assert "Type=notify" in unit
        assert re.search(r"^WatchdogSec=10$", unit, re.M)
        assert f"ExecStart=/opt/ipsec-cluster/bin/{daemon} --config " \
               f"/etc/ipsec-cluster/{daemon}.toml" in unit
        holds_vip = "ExecStartPre=+/sbin/ip address replace 203.0.113.10/32 dev lo" in unit
        assert holds_vip == (daemon in ("keyd", "cluster-node"))
        assert "ReadWritePaths=/var/lib/ipsec-cluster" in unit
        if daemon == "cluster-hooks":
            # No capability: hooks run as the service user in the unit's sandbox.
            assert re.search(r"^CapabilityBoundingSet=$", unit, re.M)
            assert "AmbientCapabilities" not in unit


def test_etcd_members_form_one_tls_cluster(converged: Converge) -> None:
    envs = {}
    for host in ETCD:
        text = (converged.host(host) / "etc" / "default" / "etcd").read_text()
        envs[host] = dict(line.split("=", 1) for line in text.splitlines()
                          if line and not line.startswith("#"))
    initial = {env["ETCD_INITIAL_CLUSTER"] for env in envs.values()}
    assert initial == {"etcd-1=https://10.10.0.11:2380,etcd-2=https://10.10.0.12:2380,"
                       "etcd-3=https://10.10.0.13:2380"}
    for host, env in envs.items():
        assert env["ETCD_NAME"] == host
        assert env["ETCD_CLIENT_CERT_AUTH"] == env["ETCD_PEER_CLIENT_CERT_AUTH"] == "true"
        assert env["ETCD_CERT_FILE"] == f"/etc/etcd/pki/{host}.pem"


def test_second_run_changes_nothing(runs: Runs) -> None:
    assert runs.second is not None
    result = assert_ran(runs.second.result())
    changed = {host: r["changed"] for host, r in result.items() if r["changed"]}
    assert changed == {}


# -- static checks (they ran while the first converge did) -----------------------------------

def test_ansible_lint_production_profile(runs: Runs) -> None:
    done = runs.lint.result()
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]


def test_syntax_check(runs: Runs) -> None:
    done = runs.syntax.result()
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    checked = re.findall(r"^playbook: (\S+)$", done.stdout, re.M)
    assert checked == list(PLAYBOOKS), done.stdout


# -- etcd users and roles --------------------------------------------------------------------

def etcdctl(endpoint: str, credentials: Path, user: str, *args: str,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", ""), "ETCDCTL_API": "3",
           "ETCDCTL_ENDPOINTS": endpoint,
           "ETCDCTL_CACERT": str(credentials / "etcd" / "ca.pem"),
           "ETCDCTL_CERT": str(credentials / "etcd" / f"{user}.pem"),
           "ETCDCTL_KEY": str(credentials / "etcd" / f"{user}-key.pem")}
    done = subprocess.run(["etcdctl", *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def test_rendered_rbac_script_against_a_real_tls_etcd(converged: Converge,
                                                      tmp_path: Path) -> None:
    if shutil.which("etcd") is None or shutil.which("etcdctl") is None:
        pytest.fail("etcd/etcdctl are not installed: run `make bootstrap`")
    pki = converged.credentials / "etcd"
    server = EtcdServer(tmp_path / "etcd", tls=(pki / "ca.pem", pki / "etcd-1.pem",
                                                pki / "etcd-1-key.pem"))
    server.start()
    try:
        script = converged.host("etcd-1") / "usr/local/sbin/ipsec-cluster-etcd-rbac"
        env = {"PATH": os.environ.get("PATH", ""), "ETCDCTL_ENDPOINTS": server.endpoint,
               "ETCDCTL_CACERT": str(pki / "ca.pem"), "ETCDCTL_CERT": str(pki / "root.pem"),
               "ETCDCTL_KEY": str(pki / "root-key.pem")}
        first = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True,
                               timeout=300, check=False)
        assert first.returncode == 0, first.stderr
        assert first.stdout.split() == ["changed"]
        again = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True,
                               timeout=300, check=False)
        assert again.returncode == 0, again.stderr
        assert again.stdout.split() == ["unchanged"]

        root = "/ipsec-cluster/prod/"

        def can_put(user: str, key: str) -> bool:
            done = etcdctl(server.endpoint, converged.credentials, user, "put", root + key, "x",
                           check=False)
            if done.returncode != 0:
                assert "permission denied" in done.stderr, done.stderr
            return done.returncode == 0

        # Authentication is on: the certificate's CN is the user, each with its own grants.
        assert can_put("keyd-1", "sa/1234")
        assert can_put("keyd-1", "keyd/keyd-1")
        assert not can_put("keyd-1", "seq/1234")
        assert can_put("node-1", "seq/1234")
        assert can_put("node-1", "nodes/node-1")
        assert not can_put("node-1", "nodes/node-2")
        assert not can_put("node-1", "sa/1234")
        assert can_put("sprayer-1", "assign/abc")
        assert not can_put("sprayer-1", "sa/1234")
        # The hook runner reads the whole cluster and writes nothing.
        for key in ("assign/abc", "nodes/sprayer-1", "sa/1234", "hooks/x"):
            assert not can_put("sprayer-1-hooks", key)
        everything = etcdctl(server.endpoint, converged.credentials, "sprayer-1-hooks", "get",
                             root, "--prefix", "--keys-only")
        assert {root + k for k in ("assign/abc", "sa/1234", "nodes/node-1")} <= \
            set(everything.stdout.split())
        outside = etcdctl(server.endpoint, converged.credentials, "sprayer-1-hooks", "get",
                          "/ipsec-cluster/other/x", check=False)
        assert outside.returncode != 0 and "permission denied" in outside.stderr
        read = etcdctl(server.endpoint, converged.credentials, "node-2", "get", root + "sa/1234",
                       "--print-value-only")
        assert read.stdout.strip() == "x"
        assert can_put("root", "policy/guest")
    finally:
        server.stop()


# -- adding a node ---------------------------------------------------------------------------

def test_add_node_issues_credentials_and_renders_only_what_it_needs(runs: Runs) -> None:
    assert runs.add_node is not None and runs.add_node_converge is not None
    c = runs.add_node_converge
    ca_before = runs.add_node_ca_before
    result = assert_ran(runs.add_node.result())
    assert set(result) == {*ETCD, "node-4"}

    assert (c.credentials / "etcd" / "ca.pem").read_bytes() == ca_before
    assert (c.credentials / "etcd" / "node-4.pem").is_file()
    config = tomllib.loads((c.host("node-4") / "etc/ipsec-cluster/cluster-node.toml").read_text())
    assert config["node"]["id"] == "node-4"
    assert config["node"]["address"] == "10.30.0.14"
    assert (c.host("node-4") / "etc/ipsec-cluster/data.key").read_text() == \
        (runs.converge.host("node-1") / "etc/ipsec-cluster/data.key").read_text()
    rbac = (c.host("etcd-1") / "usr/local/sbin/ipsec-cluster-etcd-rbac").read_text()
    assert "role node-4" in rbac
    assert "grant node-4 readwrite /ipsec-cluster/prod/nodes/node-4" in rbac
    # Nothing else was deployed.
    assert sorted(p.name for p in c.root.iterdir()) == sorted([*ETCD, "node-4"])


def test_add_node_refuses_a_host_outside_the_inventory(converged: Converge,
                                                       tmp_path: Path) -> None:
    c = Converge(tmp_path, tmp_path / "root", converged.credentials)
    done = c.playbook("add-node.yml", "-e", "new_node=node-9")
    assert done.returncode != 0
    assert "new_node=NAME" in done.stdout
    assert not c.root.exists()


# -- a lab cluster running on what the playbook rendered -------------------------------------

def ping_through(lab: Lab, member: str, target: str, settle_s: float = 20.0) -> bool:
    deadline = time.monotonic() + settle_s
    while lab.run(member, ["ping", "-c", "1", "-W", "1", target]).returncode != 0:
        if time.monotonic() > deadline:
            return False
    done = lab.run(member, ["ping", "-c", "3", "-i", "0.2", "-W", "2", target])
    return done.returncode == 0 and "3 received" in done.stdout


@pytest.mark.e2e
def test_lab_cluster_runs_on_rendered_configuration(tmp_path: Path) -> None:
    """The lab's keyd, nodes, sprayer and cluster-hooks are restarted with the files site.yml
    rendered for an inventory of the lab's hosts; a strongSwan client then connects and
    reaches the server, and the hook the playbook installed reports it.

    Only the lab's own secrets are carried over (its data key and PSK are put in the
    controller's credentials directory first, which the playbook keeps), and keyd is given the
    lab's gateway certificate, which its clients verify. etcd is the lab's (no TLS).
    """
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces)")
    for tool in ("ip", "nft", "etcd", "swanctl", "nsenter", "unshare"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: run `make bootstrap`")
    from cluster.lab import addresses as A
    from cluster.lab.lab import Lab

    # The lab's own hook runner starts on an empty directory; the rendered configuration
    # points it to the playbook's hooks directory, where hooks_scripts put this recorder.
    (tmp_path / "lab-hooks.d").mkdir()
    events = tmp_path / "hook-events"
    recorder = tmp_path / "50-record"
    recorder.write_text(f'#!/bin/sh\necho "$HOOK_EVENT $HOOK_CLIENT_ID $HOOK_NODE" >> {events}\n')
    recorder.chmod(0o755)
    lab = Lab.up(f"ans-{secrets.token_hex(3)}", nodes=2, keyd=1,
                 hooks_dir=tmp_path / "lab-hooks.d")
    try:
        members = {"keyd-1": "keyd", "node-1": "cluster-node", "node-2": "cluster-node",
                   "sprayer": "sprayer", "hooks": "cluster-hooks"}
        inventory = {"all": {"children": {"ipsec_cluster": {"children": {
            "etcd": {"hosts": {"etcd-1": {"ipsec_cluster_address": A.ETCD_IP}}},
            "keyd": {"hosts": {"keyd-1": {"ipsec_cluster_address": A.keyd_ip(1)}}},
            "nodes": {"hosts": {f"node-{i}": {"ipsec_cluster_address": A.node_ip(i)}
                                for i in (1, 2)}},
            "sprayers": {"hosts": {"sprayer": {"ipsec_cluster_address": A.BACK_ROUTER}}},
            "hooks": {"hosts": {"hooks": {"ipsec_cluster_address": A.BACK_ROUTER}}},
        }}}}}
        (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inventory))
        credentials = tmp_path / "credentials"
        credentials.mkdir()
        shutil.copy(lab.pki.data_key_file, credentials / "data.key")
        shutil.copy(lab.pki.psk_file, credentials / "psk")
        per_host = str(tmp_path / "hosts") + "/{{ inventory_hostname }}"
        extra = {
            # Rendered straight to their final paths, all under tmp_path; the etcd play
            # (which writes /etc/default, /etc/etcd) is left out with --limit.
            "ipsec_cluster_render_only": True, "ipsec_cluster_root": "",
            "ipsec_cluster_etc": per_host + "/etc", "ipsec_cluster_state_dir": per_host + "/state",
            "ipsec_cluster_unit_dir": per_host + "/units",
            "ipsec_cluster_credentials_dir": str(credentials),
            "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
            "ipsec_cluster_name": lab.name, "ipsec_cluster_vip": A.VIP,
            "ipsec_cluster_identity": A.GATEWAY_ID, "ipsec_cluster_pool": A.POOL,
            "ipsec_cluster_dns": [A.SERVER_IP],
            "ipsec_cluster_protected_networks": [A.PROTECTED_NETWORK],
            "ipsec_cluster_etcd_endpoints": [f"http://{A.ETCD_IP}:{A.ETCD_PORT}"],
            "ipsec_cluster_etcd_tls": False,
            "keyd_cert_file": str(lab.pki.cert("gateway")),
            "keyd_key_file": str(lab.pki.key("gateway")), "keyd_ca_file": str(lab.pki.ca_cert),
            "hooks_scripts": [str(recorder)],
        }
        (tmp_path / "extra.json").write_text(json.dumps(extra))
        done = run([str(BIN / "ansible-playbook"), "-i", str(tmp_path / "hosts.yml"), "site.yml",
                    "--limit", "keyd,nodes,sprayers,hooks", "-e", f"@{tmp_path / 'extra.json'}"],
                   tmp_path)
        assert set(assert_ran(done)) == set(members)

        old_pids = {}
        for member, daemon in members.items():
            rendered = tmp_path / "hosts" / member / "etc" / f"{daemon}.toml"
            target = Path(lab.state.processes[member].argv[-1])
            assert target.name == f"{member}.toml"
            old_pids[member] = lab.kill(member)
            shutil.copy(rendered, target)
            assert lab.start(member) != old_pids[member]
        for i in (1, 2):
            deadline = time.monotonic() + 60
            while (lab.etcd_json(f"nodes/node-{i}") or {}).get("state") != "ready":
                assert time.monotonic() < deadline, f"node-{i} is not ready"
                time.sleep(0.5)
        deadline = time.monotonic() + 60
        while not lab.listening("keyd-1", 500):
            assert time.monotonic() < deadline, "keyd-1 does not listen"
            time.sleep(0.5)
        # The runner watches once it saved its first revision (in the rendered state_dir).
        revision = tmp_path / "hosts" / "hooks" / "state" / "hooks.revision"
        deadline = time.monotonic() + 60
        while not revision.exists():
            assert time.monotonic() < deadline, "cluster-hooks does not watch"
            time.sleep(0.5)

        lab.add_client("alice")
        (sa,) = lab.client_sas("alice")
        assert sa.state == "ESTABLISHED"
        assert ping_through(lab, "alice", A.SERVER_IP)
        deadline = time.monotonic() + 60
        while not (events.exists() and "client-up" in events.read_text()):
            assert time.monotonic() < deadline, "the installed hook saw no client-up"
            time.sleep(0.5)
        (up,) = [line.split() for line in events.read_text().splitlines()
                 if line.startswith("client-up")]
        assert len(up) == 3 and up[2] in ("node-1", "node-2"), up   # event, client, node
        for member, daemon in members.items():
            running = Path(lab.state.processes[member].argv[-1]).read_text()
            assert running == (tmp_path / "hosts" / member / "etc" / f"{daemon}.toml").read_text()
    finally:
        lab.down(save_logs_to=tmp_path / "lab-logs")
