"""`clusterctl policy set|list|show|remove`: the traffic policies the nodes enforce
(policy/<name>; rule syntax and decision in cluster.policy, docs/operator-guide.md)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import click

from cluster.cli.context import CliFailure, connect, connection_options
from cluster.cli.output import emit, key_value_table, make_table
from cluster.policy import MODES, PolicyError, format_rule, parse_rule
from cluster.store import ChildSaRecord, Policy, Store
from cluster.store.keyspace import BadKey, check_name


def _name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return check_name(value)
    except BadKey as exc:
        raise click.BadParameter(str(exc)) from None


def _rules(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[str]:
    """Each rule in its canonical text; a bad one is a usage error (exit 2)."""
    out = []
    for text in values:
        try:
            out.append(format_rule(parse_rule(text)))
        except PolicyError as exc:
            raise click.BadParameter(str(exc)) from None
    return out


def _bound(store: Store) -> Counter[str]:
    """Child SAs bound to each policy."""
    return Counter(v.record.policy for v in store.list(ChildSaRecord).items
                   if v.record.policy is not None)


def _doc(p: Policy, bound: int) -> dict[str, Any]:
    return {"name": p.name, "mode": p.mode, "identities": list(p.identities),
            "allowed": list(p.allowed), "denied": list(p.denied), "bound_sas": bound}


@click.group()
def policy() -> None:
    """Traffic policies: what the clients bound to each may reach, enforced by the nodes."""


@policy.command("set")
@click.argument("name", callback=_name)
@click.option("--mode", required=True, type=click.Choice(MODES),
              help="full: all but denied; split: only allowed; guest: the internet and "
                   "allowed, never internal ranges (and never denied)")
@click.option("--allow", "allowed", multiple=True, callback=_rules, metavar="RULE",
              help="[ADDRESS] [PROTOCOL[/PORTS]], e.g. '10.20.0.0/16', "
                   "'10.20.0.80/32 tcp/80,443', 'udp/53' (repeatable)")
@click.option("--deny", "denied", multiple=True, callback=_rules, metavar="RULE",
              help="a rule as for --allow (repeatable)")
@click.option("--identity", "identities", multiple=True, metavar="GLOB",
              help="bind clients whose identity matches (e.g. '*@guest.example.org'; "
                   "repeatable) when their connection names no policy")
@connection_options()
def policy_set(name: str, mode: str, allowed: list[str], denied: list[str],
               identities: tuple[str, ...]) -> None:
    """Create or replace policy NAME. Nodes apply a change to established clients at once."""
    store = connect()
    record = Policy(name, list(identities), mode, allowed, denied)  # type: ignore[arg-type]
    existed = store.get(Policy, name) is not None
    store.put(record)
    doc = _doc(record, _bound(store)[name])
    doc["created"] = not existed
    emit(doc, lambda d: f"policy {d['name']} {'created' if d['created'] else 'replaced'} "
         f"({d['mode']}, {len(d['allowed'])} allowed, {len(d['denied'])} denied; "
         f"{d['bound_sas']} Child SA(s) bound)")


@policy.command("list")
@connection_options()
def policy_list() -> None:
    """Every policy, with the Child SAs bound to it; malformed values are listed as such."""
    store = connect()
    listing = store.list(Policy)
    bound = _bound(store)
    rows = [_doc(v.record, bound[v.record.name]) for v in listing.items]
    rows += [{"name": bad.key.rsplit("/", 1)[-1], "malformed": bad.reason,
              "bound_sas": bound[bad.key.rsplit("/", 1)[-1]]} for bad in listing.malformed]
    rows.sort(key=lambda r: r["name"])

    def table(rs: list[dict[str, Any]]) -> Any:
        return make_table(
            ["name", "mode", "identities", "allowed", "denied", "SAs"],
            [(r["name"], r.get("mode", "MALFORMED: " + r.get("malformed", "")),
              ", ".join(r.get("identities", [])), ", ".join(r.get("allowed", [])),
              ", ".join(r.get("denied", [])), r["bound_sas"]) for r in rs])

    emit(rows, table)


@policy.command("show")
@click.argument("name", callback=_name)
@connection_options()
def policy_show(name: str) -> None:
    """One policy by name."""
    store = connect()
    v = store.get(Policy, name)
    if v is None:
        raise CliFailure(f"no policy {name}")
    doc = _doc(v.record, _bound(store)[name])

    def table(d: dict[str, Any]) -> Any:
        return key_value_table([
            ("mode", d["mode"]), ("identities", ", ".join(d["identities"]) or None),
            ("allowed", "\n".join(d["allowed"]) or None),
            ("denied", "\n".join(d["denied"]) or None),
            ("Child SAs bound", d["bound_sas"]),
        ], title=f"policy {d['name']}")

    emit(doc, table)


@policy.command("remove")
@click.argument("name", callback=_name)
@click.option("--force", is_flag=True,
              help="remove even while Child SAs are bound to it (their traffic is dropped)")
@connection_options()
def policy_remove(name: str, force: bool) -> None:
    """Delete policy NAME (refused while Child SAs are bound to it, unless --force: the nodes
    then drop their traffic, never let it through)."""
    store = connect()
    bound = _bound(store)[name]
    if bound and not force:
        raise CliFailure(f"policy {name} is bound to {bound} Child SA(s): the nodes would drop "
                         "all their traffic; use --force to remove it anyway")
    if not store.delete(Policy, name):
        raise CliFailure(f"no policy {name}")
    emit({"name": name, "removed": True, "bound_sas": bound},
         lambda d: f"policy {d['name']} removed"
         + (f" ({d['bound_sas']} Child SA(s) now drop all traffic)" if d["bound_sas"] else ""))
