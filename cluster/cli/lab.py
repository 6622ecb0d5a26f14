"""`clusterctl lab ...`: a whole cluster in network namespaces on this machine."""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click
from rich import box
from rich.console import Console
from rich.table import Table

from cluster.lab import addresses as A
from cluster.lab import lab as labmod
from cluster.lab.errors import LabError
from cluster.lab.state import check_name
from cluster.lab.strongswan import DEFAULT_ESP_PROPOSAL, DEFAULT_IKE_PROPOSAL

P = ParamSpec("P")
R = TypeVar("R")
_err = Console(stderr=True)
SAVE_LOGS = click.option("--save-logs", type=click.Path(file_okay=False, path_type=Path),
                         help="copy the lab's logs and configuration here before removing it "
                              "(up: if it fails; default then a directory in /tmp)")


def _checked(kind: str) -> Callable[[click.Context, click.Parameter, str], str]:
    def check(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
        try:
            return check_name(value, kind)
        except LabError as exc:
            raise click.BadParameter(str(exc)) from None
    return check


NAME = click.option("--name", "lab_name", default="lab", show_default=True,
                    envvar="CLUSTERCTL_LAB", callback=_checked("lab name"), help="which lab")


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def operational(f: Callable[P, R]) -> Callable[P, R]:
    """Lab failures become one line on stderr and exit status 1, never a traceback."""

    @functools.wraps(f)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return f(*args, **kwargs)
        except LabError as exc:
            _fail(str(exc))
        except OSError as exc:
            _fail(f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}")
        except click.exceptions.Exit:
            raise
        except (click.ClickException, click.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:  # the operator gets one line, not a traceback
            _fail(f"unexpected {type(exc).__name__}: {exc}")
        raise AssertionError("unreachable")

    return wrapper


@contextmanager
def progress(title: str) -> Iterator[Callable[[str], None]]:
    """A spinner on stderr showing the current step; finished steps stay on screen."""
    with _err.status(title) as status:
        last: list[str] = []

        def step(message: str) -> None:
            if last:
                _err.print(f"[green]✓[/] {last[0]}")
            last[:] = [message]
            status.update(message)

        yield step
        if last:
            _err.print(f"[green]✓[/] {last[0]}")


@click.group()
def lab() -> None:
    """A whole cluster on this machine: namespaces, etcd, keyd, nodes, sprayer, clients."""


@lab.command()
@NAME
@click.option("--nodes", default=3, show_default=True, type=click.IntRange(0, 100))
@click.option("--keyd", default=1, show_default=True, type=click.IntRange(1, 6))
@click.option("--clients", default=0, show_default=True, type=click.IntRange(0, 150))
@click.option("--gateway", type=click.Choice(labmod.GATEWAYS), default="cluster",
              show_default=True,
              help="cluster: keyd + nodes + sprayer; strongswan: one charon responder at the "
                   "VIP (the baseline)")
@click.option("--hooks", "hooks_dir", type=click.Path(file_okay=False, exists=True,
                                                       path_type=Path),
              help="run cluster-hooks on the executables in this directory")
@click.option("--radius", is_flag=True,
              help="keyd relays EAP to a FreeRADIUS (EAP-TLS, EAP-MSCHAPv2); one keyd")
@click.option("--etcd-members", type=click.Choice([str(n) for n in A.ETCD_MEMBERS]),
              default="1", show_default=True,
              help="3: an etcd cluster of three members (etcd-1..etcd-3)")
@click.option("--node-dataplane", type=click.Choice(["userspace", "kernel", "auto"]),
              default="userspace", show_default=True,
              help="the nodes' ESP: userspace (cluster.esp over TUN) or kernel (XFRM; needs a "
                   "kernel with ESP, e.g. the VM's)")
@SAVE_LOGS
@operational
def up(lab_name: str, nodes: int, keyd: int, clients: int, gateway: str,
       hooks_dir: Path | None, radius: bool, etcd_members: str, node_dataplane: str,
       save_logs: Path | None) -> None:
    """Build a lab and return when it serves."""
    if save_logs is None:
        # a failed `up` removes the lab; its logs stay here for the operator
        save_logs = Path(tempfile.gettempdir()) / f"ipsec-cluster-lab-{lab_name}-failed-" \
            f"{time.strftime('%Y%m%dT%H%M%S')}"
    with progress(f"lab {lab_name}: starting") as step:
        the_lab = labmod.Lab.up(lab_name, nodes=nodes, keyd=keyd, clients=clients,
                                gateway=gateway, progress=step, save_logs_to=save_logs,
                                hooks_dir=hooks_dir, radius=radius,
                                etcd_members=int(etcd_members),
                                node_dataplane=node_dataplane)
    click.echo(f"lab {the_lab.name} is up: VIP {the_lab.status()['vip']}, "
               f"etcd {the_lab.etcd_endpoint}")


@lab.command()
@NAME
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@operational
def status(lab_name: str, output: str) -> None:
    """Show a lab: addresses, secrets' paths (never a secret), namespaces and PIDs."""
    st = labmod.Lab.open(lab_name).status()
    if output == "json":
        click.echo(json.dumps(st, indent=2))
        return
    console = Console()
    head = Table.grid(padding=(0, 2))
    for key in ("name", "gateway", "ready", "vip", "gateway_id", "front_network",
                "protected_network", "server_ip", "etcd_endpoints", "psk_file",
                "psk_fingerprint", "ca_cert"):
        value = st[key]
        head.add_row(key, ", ".join(value) if isinstance(value, list) else str(value))
    console.print(head)
    table = Table("member", "namespace", "address", "pid", "alive")
    rows: list[dict[str, Any]] = list(st["etcd_members"])
    rows += st["keyd"] + st["nodes"]
    rows += [{"name": "sprayer", "address": "", **st["sprayer"]}] if st["sprayer"]["pid"] else []
    rows += [{"name": "hooks", "address": "", **st["hooks"]}] if st["hooks"] else []
    rows += st["clients"]
    for r in rows:
        table.add_row(r["name"], r["namespace"], r.get("address", ""), str(r["pid"] or "-"),
                      "yes" if r["alive"] else "no")
    console.print(table)


@lab.command("add-client")
@click.argument("client", callback=_checked("client name"))
@NAME
@click.option("--auth", type=click.Choice(["psk", "cert", "eap-mschapv2", "eap-tls"]),
              default="psk",
              show_default=True)
@click.option("--eap-user", default="carol", show_default=True,
              help="eap-mschapv2: the EAP identity (a user of the lab's EAP users file)")
@click.option("--behind-nat", is_flag=True, help="behind a NAT namespace on 198.51.100.0/24")
@click.option("--no-ike", is_flag=True, help="a bare namespace: run any IKEv2 client in it")
@click.option("--ike-proposal", default=DEFAULT_IKE_PROPOSAL, show_default=True)
@click.option("--esp-proposal", default=DEFAULT_ESP_PROPOSAL, show_default=True)
@click.option("--dpd-delay", "dpd_delay_s", default=10, show_default=True,
              type=click.IntRange(0), help="seconds")
@click.option("--identity", help="the identity claimed (default NAME.clients.lab.example; "
              "eap-mschapv2: its address); a shared-secret user (alice@shared.lab.example) "
              "proves with its own PSK")
@click.option("--remote-auth", type=click.Choice(["pubkey", "psk"]), default="pubkey",
              show_default=True, help="how the client checks the gateway (psk: both ways)")
@operational
def add_client(client: str, lab_name: str, auth: str, eap_user: str, behind_nat: bool,
               no_ike: bool, ike_proposal: str, esp_proposal: str, dpd_delay_s: int,
               identity: str | None, remote_auth: str) -> None:
    """Add a client namespace; unless --no-ike, start strongSwan in it and connect."""
    the_lab = labmod.Lab.open(lab_name)
    rec = the_lab.add_client(client, auth=auth, behind_nat=behind_nat, ike=not no_ike,
                             ike_proposal=ike_proposal, esp_proposal=esp_proposal,
                             dpd_delay_s=dpd_delay_s, eap_user=eap_user, identity=identity,
                             remote_auth=remote_auth)
    if rec.ike:
        sas = the_lab.client_sas(client)
        vip = sas[0].virtual_ip if sas else None
        click.echo(f"{client}: connected from {rec.address} as {rec.identity}, "
                   f"virtual IP {vip}")
    else:
        click.echo(f"{client}: namespace {rec.netns}, address {rec.address}")


@lab.command("remove-client")
@click.argument("client", callback=_checked("client name"))
@NAME
@operational
def remove_client(client: str, lab_name: str) -> None:
    """Stop a client and delete its namespace."""
    labmod.Lab.open(lab_name).remove_client(client)
    click.echo(f"{client}: removed")


@lab.command("exec", context_settings={"ignore_unknown_options": True,
                                       "allow_interspersed_args": True})
@click.argument("member")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@NAME
@operational
def exec_(member: str, command: tuple[str, ...], lab_name: str) -> None:
    """Run COMMAND in MEMBER's namespace (a client's: with its charon's /run)."""
    argv = labmod.Lab.open(lab_name).exec_argv(member, list(command))
    sys.stdout.flush()
    os.execvp(argv[0], argv)


def _signal(value: str) -> signal.Signals:
    name = value.upper()
    try:
        return signal.Signals(int(name)) if name.isdigit() else \
            signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]
    except (KeyError, ValueError):
        raise click.BadParameter(f"unknown signal {value!r}") from None


@lab.command()
@click.argument("member")
@NAME
@click.option("--signal", "sig", default="TERM", show_default=True,
              help="signal name or number (KILL: a crash)")
@operational
def kill(member: str, lab_name: str, sig: str) -> None:
    """Signal a member's daemon (node-N, keyd-N, sprayer, etcd, a client's charon).

    With three etcd members: etcd-N is one of them, etcd all of them."""
    signum = _signal(sig)
    pid = labmod.Lab.open(lab_name).kill(member, signum)
    click.echo(f"{member}: sent {signum.name} to pid {pid}")


@lab.command()
@click.argument("member")
@NAME
@operational
def start(member: str, lab_name: str) -> None:
    """Start a member's daemon again after `lab kill`."""
    pid = labmod.Lab.open(lab_name).start(member)
    click.echo(f"{member}: started, pid {pid}")


@lab.command()
@NAME
@SAVE_LOGS
@operational
def down(lab_name: str, save_logs: Path | None) -> None:
    """Remove every namespace, process and file of a lab (also after a crash)."""
    if labmod.down(lab_name, save_logs):
        click.echo(f"lab {lab_name} is down")
    else:
        click.echo(f"no lab named {lab_name}: nothing to remove")


@lab.command("list")
@operational
def list_() -> None:
    """The labs on this machine."""
    for name in labmod.list_labs():
        click.echo(name)


@lab.command()
@click.option("--name", "lab_name", default="demo", show_default=True,
              callback=_checked("lab name"))
@click.option("--nodes", default=3, show_default=True, type=click.IntRange(2, 100))
@click.option("--keep", is_flag=True, help="leave the lab up afterwards")
@operational
def demo(lab_name: str, nodes: int, keep: bool) -> None:
    """Up, two clients pinging, kill the busiest node, show the clients kept their SAs."""
    from cluster.lab import demo as demomod

    with progress(f"lab {lab_name}: starting") as step:
        the_lab = labmod.Lab.up(lab_name, nodes=nodes, progress=step)
        try:
            victim, outcomes = demomod.run(the_lab, step=step)
        except BaseException:
            if not keep:
                step("removing the lab")
                the_lab.down()
            raise
        if not keep:
            step("removing the lab")
            the_lab.down()
    table = Table(title=f"{victim} killed (SIGKILL) while the clients pinged {A.SERVER_IP} "
                        f"every {demomod.PING_INTERVAL_S * 1000:g} ms", box=box.SIMPLE_HEAD,
                  padding=(0, 1))
    for col in ("client", "node", "IKE SA (SPIi)", "Child SA in/out", "same SAs", "gap",
                "lost"):
        table.add_column(col, no_wrap=True)
    for o in outcomes:
        moved = o.node_before != o.node_after
        table.add_row(o.client, f"{o.node_before}→{o.node_after}" if moved
                      else f"{o.node_after} (stayed)",
                      o.ike_spis_before.split("_")[0], o.child_spis_before,
                      "[green]yes[/]" if o.kept_sa else f"[red]no[/]: {o.ike_spis_after}",
                      f"{o.gap_s * 1000:.0f} ms", str(o.lost))
    # piped (make demo into a log) rich would assume 80 columns and cut the SPIs
    Console(width=None if sys.stdout.isatty() else 110).print(table)
    if keep:
        click.echo(f"the lab is still up: clusterctl lab down --name {lab_name}")
    if not all(o.kept_sa for o in outcomes):
        _fail("a client lost its SAs")
