"""The TCP stream's figures come from iperf3's own receiver report: every interval line is
read (not the closing summary), and a stall is the longest run of intervals without data."""

from __future__ import annotations

import pytest

from soak.tcp_stream import intervals, longest_stall

pytestmark = pytest.mark.unit

# iperf3 3.12 -R -i 0.2, as the lab's client prints it (a node killed at 0.4 s)
REPORT = """\
Connecting to host 10.20.0.10, port 5201
Reverse mode, remote host 10.20.0.10 is sending
[  5] local 10.99.0.46 port 47278 connected to 10.20.0.10 port 5201
[ ID] Interval           Transfer     Bitrate
[  5]   0.00-0.20   sec  26.0 KBytes  1.06 Mbits/sec
[  5]   0.20-0.40   sec  24.0 KBytes   983 Kbits/sec
[  5]   0.40-0.60   sec  0.00 Bytes  0.00 bits/sec
[  5]   0.60-0.80   sec  0.00 Bytes  0.00 bits/sec
[  5]   0.80-1.00   sec  0.00 Bytes  0.00 bits/sec
[  5]   1.00-1.20   sec  74.0 KBytes  3.03 Mbits/sec
[  5]   1.20-1.40   sec  0.00 Bytes  0.00 bits/sec
[  5]   1.40-1.60   sec  1.20 MBytes  50.3 Mbits/sec
- - - - - - - - - - - - - - - - - - - - - - - - -
[ ID] Interval           Transfer     Bitrate         Retr
[  5]   0.00-1.60   sec  1.32 MBytes  6.9 Mbits/sec    4             sender
[  5]   0.00-1.60   sec  1.32 MBytes  6.9 Mbits/sec                  receiver
"""


def test_interval_lines_are_read_and_the_summary_is_not() -> None:
    got = intervals(REPORT, started=100.0)
    assert len(got) == 8
    assert (got[0].start, got[0].end, got[0].received) == (100.0, 100.2, 26 * 1024)
    assert got[-1].received == int(1.2 * 1024 * 1024)
    assert sum(i.received for i in got) == (26 + 24 + 74) * 1024 + int(1.2 * 1024 * 1024)


def test_the_longest_stall_is_the_longest_run_without_data() -> None:
    got = intervals(REPORT, started=0.0)
    assert longest_stall(got) == pytest.approx(0.6)
    assert longest_stall(got[:2]) == 0.0
    assert longest_stall(got[6:7]) == pytest.approx(0.2)
