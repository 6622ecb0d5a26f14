"""A TCP stream through the cluster for the whole lab run: a real strongSwan client of the lab
(charon with kernel-libipsec, PSK) receives from the protected server's iperf3 (`-R`: the
server sends, so the client's report is what arrived) at a fixed rate in small writes (so it
flows evenly, not in bursts), with a report line every INTERVAL_S. A stall is a run of
intervals in which nothing arrived; the stream is broken if iperf3 ends before it is
stopped."""

from __future__ import annotations

import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.lab import addresses as A

CLIENT = "tcp-1"
ROLE = "tcp-stream"
PORT = 5201           # one of the lab server's iperf3 ports
RATE = "1M"           # bits per second
WRITE = "2K"          # bytes per write: 64 a second at RATE
INTERVAL_S = 0.2
_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}
# "[  5]   3.00-3.20   sec  24.0 KBytes   983 Kbits/sec" (the receiver's lines under -R)
_LINE = re.compile(r"^\[\s*\d+\]\s+([\d.]+)-([\d.]+)\s+sec\s+([\d.]+)\s+([KMG]?)Bytes\s")


@dataclass(frozen=True, slots=True)
class Interval:
    start: float   # time.monotonic() of its start
    end: float
    received: int  # bytes


def intervals(report: str, started: float) -> list[Interval]:
    """The receiver's interval lines of an iperf3 report (not its closing summary), at
    `started` + their offsets."""
    out = []
    for line in report.splitlines():
        m = _LINE.match(line)
        if m and float(m[2]) - float(m[1]) <= INTERVAL_S * 2:  # not the final summary
            out.append(Interval(started + float(m[1]), started + float(m[2]),
                                int(float(m[3]) * _UNITS[m[4]])))
    return out


def longest_stall(received: list[Interval]) -> float:
    """The longest run of consecutive intervals in which nothing arrived, in seconds."""
    worst = run = 0.0
    for i in received:
        run = run + (i.end - i.start) if i.received == 0 else 0.0
        worst = max(worst, run)
    return worst


class TcpStream:
    def __init__(self, lab: Any) -> None:
        self.lab = lab
        lab.add_client(CLIENT)
        self.started = time.monotonic()
        rec = lab.spawn_in(CLIENT, ROLE, [
            "iperf3", "-c", A.SERVER_IP, "-p", str(PORT), "-R", "-b", RATE, "-l", WRITE,
            "-t", "86400", "-i", str(INTERVAL_S), "--forceflush"])
        self.log = Path(rec.log)
        self.stopped_at: float | None = None

    def running(self) -> bool:
        rec = self.lab.state.processes.get(ROLE)
        return bool(rec and rec.alive())

    def figures(self, since: float, until: float) -> dict[str, Any]:
        """What arrived in [since, until], the longest stall there, and whether the stream
        still runs."""
        inside = [i for i in intervals(self.log.read_text(errors="replace"), self.started)
                  if since <= i.start and i.end <= until]
        return {"tcp_rate": RATE, "tcp_interval_s": INTERVAL_S, "tcp_intervals": len(inside),
                "tcp_received": sum(i.received for i in inside),
                "tcp_worst_stall_s": round(longest_stall(inside), 1),
                "tcp_running": self.running(),
                "tcp_last_words": self._last_words() if not self.running() else ""}

    def _last_words(self) -> str:
        lines = [ln for ln in self.log.read_text(errors="replace").splitlines()
                 if ln.strip() and not _LINE.match(ln)]
        return " / ".join(lines[-2:])[:200]

    def stop(self) -> None:
        if self.running():
            self.lab.kill(ROLE, signal.SIGINT)
