"""docs/reliability.md from the results of one soak run: every figure comes from `results`."""

from __future__ import annotations

from typing import Any

STUDIES = (
    ("fuzz", "1. Decoder fuzzing"),
    ("crash_cycles", "2. Crash cycles under traffic"),
    ("etcd_gone", "3. etcd gone"),
    ("partition", "4. Partition"),
    ("floods", "5. Floods"),
    ("secrets", "6. Secrets"),
    ("confinement", "7. Confinement"),
)


def _goal(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _fuzz(r: dict[str, Any]) -> list[str]:
    out = ["| decoder | inputs tried | of budget | decoded | refused (typed) | untyped "
           "exceptions | distinct crashes | edges reached | wall s |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    total = untyped = 0
    short = []
    for t in r["targets"]:
        total += t["inputs"]
        untyped += t["untyped"]
        if t["inputs"] < t.get("budget", 0):
            short.append(t["target"])
        title = t.get("title", t["target"]) + \
            (f" ({t['shards']} processes)" if t.get("shards", 1) > 1 else "")
        out.append(f"| {title} | {t['inputs']:,} | {t.get('budget', 0):,} "
                   f"| {t.get('decoded', 0):,} | {t.get('refused', 0):,} | {t['untyped']:,} "
                   f"| {len(t['crashes'])} | {t.get('cov') or '?'} | {t.get('wall_s', '?')} |")
    out.append("")
    out.append(f"Inputs in all: {total:,}. Untyped exceptions: {untyped} (goal 0: "
               f"{_goal(untyped == 0)}).")
    early = {t["target"]: t["ended_early"] for t in r["targets"] if t.get("ended_early")}
    short = [n for n in short if n not in early]
    if short:
        out.append(f"Stopped by the time cap before the input budget: {', '.join(short)}.")
    out += [f"- {n} ended before its budget and its time cap ({why})."
            for n, why in early.items()]
    for t in r["targets"]:
        for key, c in t["crashes"].items():
            out.append(f"- {t['target']}: `{key}` ({c['count']} inputs): {c['message']}")
    rp = r["replay"]
    out.append("")
    out.append(f"Crash inputs of earlier runs (soak/crashes/, each fixed in its decoder with a "
               f"regression test in tests/unit) replayed: {rp['replayed']}; still failing: "
               f"{len(rp['still_failing'])}.")
    out += [f"- still failing: {s}" for s in rp["still_failing"]]
    return out


def _secrets(r: dict[str, Any]) -> list[str]:
    out = [f"Key material sought: {r['keys']} keys of {r['ike_sas']} IKE SAs and "
           f"{r['child_sas']} Child SAs, each as hex, base64 and raw bytes.", "",
           "| where | items searched | bytes | hits: SA keys, data key | hits: lab PSK |",
           "| --- | ---: | ---: | ---: | ---: |"]
    for where, s in r["sources"].items():
        out.append(f"| {where} | {s['items']:,} | {s['bytes']:,} | {s['hits']} "
                   f"| {s.get('lab_hits', 0)} |")
    hits = sum(s["hits"] for s in r["sources"].values())
    lab_hits = sum(s.get("lab_hits", 0) for s in r["sources"].values())
    out += ["", f"Hits of SA keys and the data key: {hits}; of the lab PSK: {lab_hits} (goal 0: "
            f"{_goal(hits + lab_hits == 0)})."]
    out += [f"- {h}" for h in r.get("hit_list", [])]
    if r.get("note"):
        out += ["", r["note"]]
    return out


def _confinement(r: dict[str, Any]) -> list[str]:
    out = ["The role of each instance is what `cluster.grants.component_grants` grants it.", "",
           "| component | requests tried | allowed | allowed beyond its role |",
           "| --- | ---: | ---: | ---: |"]
    beyond = 0
    for c in r["components"]:
        beyond += len(c["beyond"])
        out.append(f"| {c['user']} | {c['tried']} | {c['allowed']} | {len(c['beyond'])} |")
    out += ["", f"Requests allowed beyond a role: {beyond} (goal 0: {_goal(beyond == 0)}); "
            f"requests its role allows that etcd refused: {r['refused_within']}."]
    for c in r["components"]:
        out += [f"- {c['user']}: {b}" for b in c["beyond"]]
    return out


def _crash_cycles(r: dict[str, Any]) -> list[str]:
    out = [
        f"Cycles: {r['cycles']} of {r['planned']} ("
        + ", ".join(f"{k} {v}" for k, v in sorted(r["by_kind"].items()))
        + f"), planned drains between them: {r['drains']}; {r['clients']} clients; etcd "
        f"members killed one at a time (of {r.get('etcd_members', 1)}): "
        + (", ".join(f"{m} {n}" for m, n in sorted(r.get("by_member", {}).items())
                     if m.startswith("etcd")) or "none") + ".", "",
        "| figure | value | goal |", "| --- | ---: | --- |",
        f"| sessions lost | {r['sessions_lost']} | 0: {_goal(r['sessions_lost'] == 0)} |",
        f"| cycles after which a client stayed unanswered > cycle timeout | {len(r['stuck'])} "
        "| 0 |",
        *(f"| worst gap, {k} killed | {v} s | |" for k, v in sorted(r["worst_gap_s"].items())),
        f"| ESP packets from the cluster captured (whole lab run) | {r['esp_captured']:,} "
        f"on {r['spis_captured']} SPIs | |",
        f"| (SPI, sequence number) pairs seen twice | {r['seq_reused']} "
        f"| 0: {_goal(r['seq_reused'] == 0)} |",
        f"| (SPI, IV) pairs seen twice (AEAD) | {r['iv_reused']} "
        f"| 0: {_goal(r['iv_reused'] == 0)} |",
        *_tcp_rows(r),
        "", "Rekeys and re-authentications caused: the initiator clients never start either "
        "on their own, so a session the cluster lost would show above as lost, not as a rekey. "
        "The ESP capture is at the initiator clients; the TCP stream's client is not in it.",
    ]
    out += [f"- {s}" for s in r["stuck"]]
    if r.get("stuck_clients"):
        out += ["", "Clients unanswered past a cycle's timeout, with their longest silence "
                "over the cycles:"]
        out += [f"- {n}: cycles {', '.join(map(str, cycles))}; longest silence "
                f"{r['stuck_silence_s'][n]} s" for n, cycles in r["stuck_clients"].items()]
    out += [f"- lost: {n}" for n in r["lost"]]
    return out


def _tcp_rows(r: dict[str, Any]) -> list[str]:
    if "tcp_running" not in r:
        return [f"| TCP stream | not run: {r.get('tcp_error') or 'no stream'} | |"]
    return [
        f"| TCP stream (iperf3 at {r['tcp_rate']}bit/s to a strongSwan client): bytes "
        f"received during the cycles | {r['tcp_received']:,} in {r['tcp_intervals']} "
        f"intervals of {r.get('tcp_interval_s', '?')} s | |",
        f"| its longest stall (nothing received) | {r['tcp_worst_stall_s']} s | |",
        f"| the stream still running after the cycles | "
        f"{'yes' if r['tcp_running'] else 'no: ' + r['tcp_last_words']} "
        f"| yes: {_goal(r['tcp_running'])} |",
    ]


def _floods(r: dict[str, Any]) -> list[str]:
    ike, esp, before = r["ike"], r["esp"], r["before"]
    during = ike["during"]
    all_in = during["established"] == during["tried"]
    return [
        f"IKE_SA_INIT flood: {ike['sent']:,} requests in {ike['seconds']} s ({ike['pps']:,}/s; "
        f"socket buffer full {ike['send_errors']:,} times).", "",
        "| figure | value | goal |", "| --- | ---: | --- |",
        f"| keyd CPU during the flood | {ike['keyd_cpu_pct']} % of a core | bounded |",
        f"| keyd resident memory before / worst / after | {ike['keyd_rss_mb_before']} / "
        f"{ike['keyd_rss_mb_max']} / {ike['keyd_rss_mb_after']} MiB | bounded |",
        f"| cookies sent | {ike['cookies_sent']:,} | > 0: {_goal(ike['cookies_sent'] > 0)} |",
        *([f"| new IKE_SA_INITs keyd shed while behind (`overload`) | "
           f"{ike['shed_overload']:,} | |"] if "shed_overload" in ike else []),
        f"| legitimate clients established during the flood | {during['established']} of "
        f"{during['tried']} tried (of {r.get('planned_clients', '?')}) | all: {_goal(all_in)} |",
        f"| their establishment time, median / worst | {during['median_s']} / "
        f"{during['worst_s']} s | |",
        f"| the same without the flood ({before['established']} of {before['tried']}), median "
        f"/ worst | {before['median_s']} / {before['worst_s']} s | |",
        "", f"ESP flood at the nodes: {esp['sent']:,} datagrams in {esp['seconds']} s "
        f"({esp['pps']:,}/s), half with random SPIs, half with real clients' SPIs and "
        "random contents.", "",
        "| figure | value | goal |", "| --- | ---: | --- |",
        *(f"| node drops counted: {k} | {v:,} | |" for k, v in esp["drops"].items()),
        *([f"| unknown SPIs read from etcd / shed (not read: over the nodes' read rate) | "
           f"{esp['sa_fetches']:,} / {esp['sa_fetches_shed']:,} | |"]
          if "sa_fetches_shed" in esp else []),
        f"| echo requests of {esp['clients']} real clients meanwhile / replies | "
        f"{esp['echoes_sent']:,} / {esp['replies']:,} | |",
        f"| their packets lost | {esp['lost']} | 0: {_goal(esp['lost'] <= esp['clients'])} |",
        f"| their longest silence | {esp['worst_silence_s']} s | |",
        *(["", "Legitimate clients that failed:"] if r.get("failures") else []),
        *(f"- {f}" for f in r.get("failures", [])[:10]),
    ]


def _partition(r: dict[str, Any]) -> list[str]:
    return [
        f"Node cut off: {r['node']}, carrying {r['clients']} clients (after a planned drain "
        f"and undrain of it: its clients went to {', '.join(r['drained_owners'])} and back).",
        "",
        "| figure | value | goal |", "| --- | ---: | --- |",
        f"| ESP the node sent in the second before the cut | {r['esp_before_cut']} | |",
        f"| ESP it sent after the cut | {r['esp_after_cut']} | |",
        f"| time until it stopped sending on its clients' SAs | {r['fenced_s']} s "
        f"| ≤ lease TTL {r['lease_ttl_s']:g} s + 1 s: {_goal(r['fence_ok'])} |",
        f"| clients served again through another node | {r['served_again']} of "
        f"{r['clients']} | all |",
        f"| worst time until a client was answered again | {r['worst_served_s']} s | |",
        "", f"New owners: {', '.join(r['new_owners'])}.",
    ]


def _etcd_gone(r: dict[str, Any]) -> list[str]:
    lost = r["lost"]
    return [
        "| figure | value | goal |", "| --- | ---: | --- |",
        *([f"| etcd members stopped | {r['etcd_members']} of {r['etcd_members']} | all |"]
          if "etcd_members" in r else []),
        f"| etcd stopped for | {r['gone_s']} s | 60 s |",
        f"| echo requests {r['clients']} clients sent meanwhile | {r['echoes_sent']:,} | |",
        f"| replies they got in that time | {r['replies']:,} | |",
        f"| data-plane packets lost | {lost:,} | 0: {_goal(lost <= r['clients'])} |",
        f"| longest silence of a client | {r['worst_silence_s']} s | |",
        f"| a new client while etcd was away | {r['new_client_during']} "
        f"(after {r['new_client_during_s']} s) | a clear refusal: "
        f"{_goal(r['new_client_during_kind'] == 'refused')} |",
        f"| time to full service after etcd returned (a new client established) "
        f"| {r['full_service_s']} s | |",
        f"| every old client answered after it returned | {r['old_clients_answering_after']} "
        f"| yes |",
        *(["", "A new client got no answer while etcd was away, not a refusal: keyd answers "
            "IKE_SA_INIT and withholds the IKE_AUTH answer until it can write the IKE SA "
            "(docs/keyd.md, \"When etcd is unreachable\"), so the client times out; a client "
            "that keeps retransmitting completes once etcd returns. DESIGN.md asks for a "
            "clear error instead: the goal is not met as built."]
          if r["new_client_during_kind"] == "no answer" else []),
        "", "Lost counts echo requests without a reply between the stop and the end of the "
        "window; up to one in flight per client at either edge is accounting, not loss (the "
        "goal allows that many).",
        *(["", "Refusals of new clients after etcd returned, before the first success: "
           + "; ".join(r["first_refusals_after"])] if r["first_refusals_after"] else []),
    ]


_SECTIONS = {"fuzz": _fuzz, "secrets": _secrets, "confinement": _confinement,
             "partition": _partition, "etcd_gone": _etcd_gone,
             "crash_cycles": _crash_cycles, "floods": _floods}


def render(machine: dict[str, str], results: dict[str, Any], budget: Any,
           command: str, total_s: float) -> str:
    lines = [
        "# Reliability in figures",
        "",
        f"Generated by `{command}` on {machine['date']}. Every figure below comes from that run; "
        "nothing in this file is typed in. Run it again to refresh it (under 30 minutes on 2 "
        "cores; not part of `make test`).",
        "",
        "| machine | |", "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in machine.items() if k != "date"],
        "",
        "The machine is shared: the load above is what other work put on it while the soak "
        "ran, so times are upper bounds and input counts per second lower bounds.",
        "",
        "## Studies in this run",
        "",
    ]
    for key, title in STUDIES:
        r = results.get(key)
        if r is None:
            state = "not run (not chosen with --only)"
        elif "error" in r:
            state = f"failed to run: {r['error']}"
        else:
            state = f"ran ({r.get('elapsed_s', '?')} s)"
        lines.append(f"- {title}: {state}")
    lines += ["", f"Whole run: {total_s / 60:.1f} minutes. Budget (soak/budget.py): {budget}.",
              ""]
    for key, title in STUDIES:
        r = results.get(key)
        if r is None or "error" in r:
            continue
        lines += [f"## {title}", "", r.get("method", ""), ""]
        lines += _SECTIONS[key](r)
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
