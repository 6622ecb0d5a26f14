"""Study 5: floods. In the shared lab, from a namespace that owns a whole private range (the
lab's AnyIP helper, cluster/lab/bench.py), raw IPv4/UDP datagrams with spoofed sources:

- IKE_SA_INIT requests (a real one from the project's initiator, a fresh initiator SPI and
  source address each) to VIP:500 for `flood_s`, as fast as one sender goes (at most
  `flood_max_pps`): keyd's CPU and memory sampled, its cookie counter read, and
  `flood_clients` legitimate clients connecting meanwhile (spread over the flood, each
  given 20 s), timed, against the same number connecting before the flood;
- ESP to VIP:4500 for `flood_esp_s`: half with random SPIs, half with the SPIs of real clients
  but random contents (bad ICVs): the nodes' drop counters, and the real clients' echoes
  meanwhile."""

from __future__ import annotations

import ipaddress
import os
import random
import socket
import statistics
import struct
import threading
import time
from pathlib import Path
from typing import Any

from soak.budget import Budget

METHOD = (
    "In the shared lab: a sender namespace holding 10.41.0.0/16 (AnyIP) sends raw IPv4/UDP "
    "with a random source in 10.41.128.0/17 for every datagram; legitimate clients connect "
    "from 10.41.0.0/24 in the same namespace with the project's IKE client (PSK), one after "
    "the other (during the flood: spread over it), timed from the first IKE_SA_INIT to the "
    "established Child SA.")
NETWORK = "10.41.0.0/16"
SPOOFED = ipaddress.ip_network("10.41.128.0/17")
LEGIT = ipaddress.ip_network("10.41.0.0/24")


def _ipv4_udp(src: int, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    # id and checksum 0: the kernel fills them in for a raw socket (IP_HDRINCL)
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                       src.to_bytes(4), dst) + udp


class _Flood(threading.Thread):
    """Sends datagrams made by `make(rng)` for `seconds`, at most `max_pps`."""

    def __init__(self, sock: socket.socket, make: Any, seconds: float, max_pps: int) -> None:
        super().__init__(name="soak-flood", daemon=True)
        self.sock, self.make, self.seconds, self.max_pps = sock, make, seconds, max_pps
        self.sent = 0
        self.errors = 0
        self.elapsed_s = 0.0

    def run(self) -> None:
        rng = random.Random(os.urandom(8))
        t0 = time.monotonic()
        dst = (str(ipaddress.ip_address(self.make.dst)), 0)
        while (now := time.monotonic()) - t0 < self.seconds:
            if self.sent > (now - t0) * self.max_pps:
                time.sleep(0.001)
                continue
            for _ in range(64):
                try:
                    self.sock.sendto(self.make(rng), dst)
                    self.sent += 1
                except OSError:  # a full socket buffer: the machine's limit
                    self.errors += 1
        self.elapsed_s = time.monotonic() - t0


class _IkeInit:
    def __init__(self, template: bytes, vip: str) -> None:
        self.template, self.dst = template, ipaddress.ip_address(vip).packed
        self.base, self.size = int(SPOOFED.network_address), SPOOFED.num_addresses

    def __call__(self, rng: random.Random) -> bytes:
        msg = rng.randbytes(8) + self.template[8:]
        return _ipv4_udp(self.base + rng.randrange(self.size), self.dst, 500, 500, msg)


class _Esp:
    def __init__(self, spis: list[int], vip: str) -> None:
        self.spis, self.dst = spis, ipaddress.ip_address(vip).packed
        self.base, self.size = int(SPOOFED.network_address), SPOOFED.num_addresses

    def __call__(self, rng: random.Random) -> bytes:
        spi = rng.choice(self.spis) if rng.random() < 0.5 else rng.randrange(1, 1 << 32)
        body = spi.to_bytes(4) + rng.randrange(1 << 32).to_bytes(4) + rng.randbytes(72)
        return _ipv4_udp(self.base + rng.randrange(self.size), self.dst, 4500, 4500, body)


def _template(vip: str) -> bytes:
    from keyd.ike import Credentials, Initiator, InitiatorConfig
    init = Initiator(InitiatorConfig(identity="flood@soak.example",
                                     credentials=Credentials(psk=b"flood"),
                                     ike_proposals=["aes128gcm16-prfsha256-x25519"],
                                     esp_proposals=["aes128gcm16"]))
    init.connect(("10.41.128.1", 500), (vip, 500), time.time())
    while init.next_event() is not None:
        pass
    return init.datagrams_to_send()[0].data


def _proc(pid: int) -> tuple[float, int]:
    """(CPU seconds used, resident bytes) of a process."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return cpu, int(line.split()[1]) * 1024
    return cpu, 0


def _connect_times(session: Any, ns: str, first: int, count: int, failures: list[str],
                   while_: Any = lambda: True, spread_s: float = 0.0) -> list[float | None]:
    """Establishment times of `count` clients one after the other (None: failed), starting
    no new one once `while_()` is false; with `spread_s`, client i starts no earlier than
    i * spread_s / count after the first (so they meet the whole flood, not its start)."""
    from bench.esp_client import ESP_PROPOSAL, IKE_PROPOSAL
    from cluster.host import inside_netns
    from keyd.client import ExchangeTimeout, IkeClient
    out: list[float | None] = []
    start = time.monotonic()
    for i in range(count):
        wait = start + i * spread_s / max(count, 1) - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        if not while_():
            break
        addr = str(LEGIT[first + i])
        with inside_netns(ns):
            client = IkeClient.psk(session.psk, f"legit-{addr}@bench.example", session.gateway_id,
                                   addr, (session.vip, 500), 4500, IKE_PROPOSAL, ESP_PROPOSAL,
                                   session.cas, request_address=False)
        t = time.monotonic()
        try:
            client.connect(timeout_s=20)
            out.append(time.monotonic() - t)
        except ExchangeTimeout as exc:
            out.append(None)
            failures.append(f"{addr}: {exc}")
        finally:
            client.close()
    return out


def _summary(times: list[float | None]) -> dict[str, Any]:
    ok = [t for t in times if t is not None]
    return {"tried": len(times), "established": len(ok),
            "median_s": round(statistics.median(ok), 3) if ok else None,
            "worst_s": round(max(ok), 3) if ok else None}


def _node_drops(session: Any) -> dict[str, float]:
    from bench.failover_lab import scrape
    total: dict[str, float] = {}
    for node in session.nodes():
        for name, v in scrape(session.lab, node, 9411, ("ipsec_cluster_node_drops",)).items():
            reason = name.split('reason="', 1)[1].split('"', 1)[0] if "reason=" in name else name
            total[reason] = total.get(reason, 0.0) + v
    return total


def _node_reads(session: Any) -> dict[str, float]:
    """The nodes' on-demand sa/ reads of unknown SPIs: made, and shed (docs/node.md,
    "Unknown SPIs under a flood")."""
    from bench.failover_lab import scrape
    total = {"sa_fetches": 0.0, "sa_fetches_shed": 0.0}
    for node in session.nodes():
        for name, v in scrape(session.lab, node, 9411, ("ipsec_cluster_node_sa_fetches",)).items():
            key = name.removeprefix("ipsec_cluster_node_").removesuffix("_total")
            if key in total:
                total[key] += v
    return total


def _shed(session: Any) -> float:
    from bench.failover_lab import scrape
    return sum(scrape(session.lab, "keyd-1", 9410,
                      ('keyd_datagrams_dropped_total{reason="overload"}',)).values())


def run(session: Any, budget: Budget) -> dict[str, Any]:
    from bench.esp_client import longest_silence
    from bench.failover_lab import scrape
    from cluster.host import inside_netns
    from cluster.lab.bench import address_range

    rec = address_range(session.lab, "flood", NETWORK)
    with inside_netns(rec.netns):
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    keyd_pid = session.lab.state.processes["keyd-1"].pid
    result: dict[str, Any] = {"method": METHOD, "planned_clients": budget.flood_clients}
    try:
        failures: list[str] = []
        result["failures"] = failures
        result["before"] = _summary(_connect_times(session, rec.netns, 1, budget.flood_clients,
                                                   failures))
        cookies0 = sum(scrape(session.lab, "keyd-1", 9410, ("keyd_cookies_sent",)).values())
        shed0 = _shed(session)
        _, rss0 = _proc(keyd_pid)
        cpu0 = _proc(keyd_pid)[0]
        flood = _Flood(raw, _IkeInit(_template(session.vip), session.vip), budget.flood_s,
                       budget.flood_max_pps)
        t0 = time.monotonic()
        flood.start()
        samples: list[tuple[float, float, int]] = []  # (time, keyd CPU s, keyd RSS)
        sampler_stop = threading.Event()

        def sample() -> None:
            while not sampler_stop.wait(0.5):
                samples.append((time.monotonic(), *_proc(keyd_pid)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        # after a second of flood (the cookie threshold is passed), spread over the rest
        time.sleep(min(1.0, budget.flood_s / 10))
        during = _connect_times(session, rec.netns, 100, budget.flood_clients, failures,
                                flood.is_alive, spread_s=0.9 * (budget.flood_s - 1.0))
        flood.join()
        t1 = time.monotonic()
        sampler_stop.set()
        sampler.join()
        _, rss1 = _proc(keyd_pid)
        cookies1 = sum(scrape(session.lab, "keyd-1", 9410, ("keyd_cookies_sent",)).values())
        shed1 = _shed(session)
        # keyd's CPU over the flood itself: the last sample within it
        within = [x for x in samples if x[0] <= t0 + flood.elapsed_s] or samples[:1]
        t_cpu, cpu1 = (within[-1][0], within[-1][1]) if within else (t1, _proc(keyd_pid)[0])
        result["ike"] = {
            "seconds": round(flood.elapsed_s, 1), "sent": flood.sent,
            "pps": round(flood.sent / max(flood.elapsed_s, 0.001)), "send_errors": flood.errors,
            "keyd_cpu_pct": round(100 * (cpu1 - cpu0) / max(t_cpu - t0, 0.001)),
            "keyd_rss_mb_before": round(rss0 / 2**20, 1),
            "keyd_rss_mb_max": round(max([rss1, *(x[2] for x in samples)]) / 2**20, 1),
            "keyd_rss_mb_after": round(rss1 / 2**20, 1),
            "cookies_sent": int(cookies1 - cookies0), "during": _summary(during),
            # new IKE_SA_INITs keyd dropped while behind (docs/keyd.md, "Under a flood")
            "shed_overload": int(shed1 - shed0)}
        # ESP: random SPIs and real SPIs with bad ICVs
        drops0 = _node_drops(session)
        reads0 = _node_reads(session)
        clients = session.clients
        esp = _Flood(raw, _Esp([c.sa.spi_out for c in clients], session.vip),
                     budget.flood_esp_s, budget.flood_max_pps)
        # echoes sent and replies received in one window (as in etcd_gone: up to one echo
        # in flight per client at either edge is accounting, not loss)
        e0 = time.monotonic()
        sent0 = sum(c.sent for c in clients)
        esp.start()
        esp.join()
        e1 = time.monotonic()
        sent1 = sum(c.sent for c in clients)
        replies = sum(sum(1 for r in c.replies if e0 <= r < e1) for c in clients)
        drops1 = _node_drops(session)
        reads1 = _node_reads(session)
        result["esp"] = {
            "seconds": round(esp.elapsed_s, 1), "sent": esp.sent,
            "pps": round(esp.sent / max(esp.elapsed_s, 0.001)),
            "drops": {k: int(drops1.get(k, 0) - drops0.get(k, 0)) for k in sorted(drops1)
                      if drops1.get(k, 0) != drops0.get(k, 0)},
            "sa_fetches": int(reads1["sa_fetches"] - reads0["sa_fetches"]),
            "sa_fetches_shed": int(reads1["sa_fetches_shed"] - reads0["sa_fetches_shed"]),
            "echoes_sent": sent1 - sent0, "replies": replies,
            "lost": max(0, sent1 - sent0 - replies), "clients": len(clients),
            "worst_silence_s": round(max(longest_silence(c.replies, e0, e1)
                                         for c in clients), 3)}
    finally:
        raw.close()
    return result
