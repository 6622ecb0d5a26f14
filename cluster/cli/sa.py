"""`clusterctl sa list|show SPI`: Child SAs, never their keys."""

from __future__ import annotations

from typing import Any

import click

from cluster.cli.context import CliFailure, connect, connection_options
from cluster.cli.output import age, emit, key_value_table, make_table
from cluster.cli.view import read_sa, read_snapshot, sa_rows
from cluster.store.keyspace import BadKey, parse_spi


def _suite(r: dict[str, Any]) -> str:
    return r["encr"] + (f"-{r['integ']}" if r["integ"] else "") + ("-esn" if r["esn"] else "")


@click.group()
def sa() -> None:
    """Child SAs (the ESP SAs the nodes carry). Key material is never shown."""


@sa.command("list")
@connection_options()
def sa_list() -> None:
    """Every Child SA with its client, suite, owner and last sequence checkpoint."""

    def table(rows: list[dict[str, Any]]) -> Any:
        return make_table(
            ["SPI in", "SPI out", "identity", "virtual IP", "suite", "owner", "out seq",
             "in highest", "age", "replaces"],
            [(r["spi_in"], r["spi_out"], r["identity"], r["virtual_ip"], _suite(r), r["owner"],
              r["seq"]["out_seq"] if r["seq"] else None,
              r["seq"]["in_highest"] if r["seq"] else None, age(r["created_at"]),
              r["replaces"]) for r in rows])

    emit(sa_rows(read_snapshot(connect())), table)


@sa.command("show")
@click.argument("spi")
@connection_options()
def sa_show(spi: str) -> None:
    """One Child SA by its inbound SPI (8 hex digits, 0x optional)."""
    try:
        spi_in = parse_spi(spi.lower().removeprefix("0x").rjust(8, "0"))
    except BadKey as exc:
        raise click.BadParameter(str(exc), param_hint="SPI") from None
    row = read_sa(connect(), spi_in)
    if row is None:
        raise CliFailure(f"no Child SA with inbound SPI {spi_in:08x}")

    def table(r: dict[str, Any]) -> Any:
        s = r["seq"] or {}
        return key_value_table([
            ("SPI in / out", f"{r['spi_in']} / {r['spi_out']}"),
            ("IKE SA", r["ike_sa_id"]), ("identity", r["identity"]),
            ("virtual IP", r["virtual_ip"]), ("virtual IPv6", r["virtual_ip6"]),
            ("peer", r["peer"]),
            ("UDP encapsulation", r["udp_encap"]), ("suite", _suite(r)),
            ("local TS", r["ts_local"]), ("remote TS", r["ts_remote"]),
            ("age", age(r["created_at"])),
            ("lifetimes", f"soft {r['soft_lifetime_s']}s, hard {r['hard_lifetime_s']}s"),
            ("replaces", r["replaces"]),
            ("policy", r.get("policy") or "none (full tunnel)"),
            ("owner", r["owner"]), ("epoch", r["epoch"]),
            ("sequence", f"out {s.get('out_seq')}, in highest {s.get('in_highest')} "
                         f"({s.get('kind')} by {s.get('owner')}, epoch {s.get('epoch')})"
             if s else None),
        ], title=f"Child SA {r['spi_in']}")

    emit(row, table)
