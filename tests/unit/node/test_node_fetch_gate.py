"""The on-demand SA read gate (cluster.node.sas.FetchGate): a flood of made-up SPIs is
shed at the rate, a real unknown SPI is still read, a repeat within the retry period is
neither read nor counted as shed."""

from __future__ import annotations

from cluster.node.sas import FetchGate


def test_burst_then_rate() -> None:
    gate = FetchGate(rate=10.0, burst=5, retry_s=5.0)
    admitted = [gate.admit(spi, 0.0) for spi in range(1, 21)]
    assert admitted == [True] * 5 + [False] * 15
    assert gate.shed == 15
    # one second later: the rate gives ten tokens, the bucket holds five
    later = [gate.admit(spi, 1.0) for spi in range(100, 120)]
    assert sum(later) == 5  # refilled up to the burst only
    assert gate.shed == 30


def test_an_spi_is_read_once_per_retry_period() -> None:
    gate = FetchGate(rate=10.0, burst=5, retry_s=5.0)
    assert gate.admit(7, 0.0)
    assert not gate.admit(7, 1.0)  # read lately: a repeat, not a shed
    assert gate.shed == 0
    assert gate.admit(7, 5.0)


def test_shed_spi_is_read_at_its_next_packet_once_the_rate_allows() -> None:
    gate = FetchGate(rate=10.0, burst=1, retry_s=5.0)
    assert gate.admit(1, 0.0)
    assert not gate.admit(2, 0.01)  # shed: no token
    assert gate.admit(2, 0.2)  # not remembered as read: its next packet gets the read
    assert gate.shed == 1


def test_memory_stays_bounded_under_a_long_flood() -> None:
    gate = FetchGate(rate=50.0, burst=100, retry_s=5.0)
    now = 0.0
    for spi in range(1, 200_000):
        now += 1e-4  # 10,000 made-up SPIs a second for 20 s
        gate.admit(spi, now)
    assert len(gate._tried) <= 4 * 100 + 50 * 5
    assert gate.shed > 190_000
