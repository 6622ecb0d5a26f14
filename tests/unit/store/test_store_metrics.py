from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from cluster.metrics import MetricsError, parse_listen, union_registry
from cluster.store.watch import MALFORMED


def test_parse_listen() -> None:
    assert parse_listen("") is None
    assert parse_listen("127.0.0.1:9410") == ("127.0.0.1", 9410)
    assert parse_listen("[::1]:9410") == ("::1", 9410)
    for bad in ("9410", "host:", "host:99999", ":80", "h:x"):
        with pytest.raises(MetricsError):
            parse_listen(bad)


def test_union_exposes_store_counters_and_own() -> None:
    own = CollectorRegistry()
    Counter("ipsec_cluster_test_own", "a daemon's own counter", registry=own).inc()
    MALFORMED.labels("sa").inc(0)
    text = generate_latest(union_registry(own)).decode()
    assert "ipsec_cluster_test_own_total 1.0" in text
    assert "ipsec_cluster_store_malformed_records_total" in text


def test_in_loop_runs_callbacks_on_the_loop() -> None:
    import asyncio
    import threading

    from cluster.store import in_loop

    async def main() -> list[tuple[str, bool]]:
        loop = asyncio.get_running_loop()
        got: list[tuple[str, bool]] = []
        done = asyncio.Event()

        def on_event(e: str) -> None:
            got.append((e, threading.current_thread() is threading.main_thread()))
            done.set()

        t = threading.Thread(target=in_loop(loop, on_event), args=("lost",))
        t.start()
        await asyncio.wait_for(done.wait(), 10)
        t.join()
        return got

    assert asyncio.run(main()) == [("lost", True)]
