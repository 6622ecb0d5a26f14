"""cluster-hooks speaks systemd's notify protocol: the real daemon process, a real etcd and a
real AF_UNIX datagram socket as NOTIFY_SOCKET (what systemd gives a Type=notify unit)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hook_harness import RECORDER, NotifyListener, Runner, recorded, wait_until, write_hook

from cluster.procs import EtcdServer
from cluster.store.client import Store
from cluster.store.keyspace import Keyspace
from cluster.store.records import NodeRecord
from cluster.store.seal import DataKey

WATCHDOG_USEC = 1_000_000   # a ping every 0.5 s


@pytest.fixture
def listener() -> Iterator[NotifyListener]:
    n = NotifyListener()
    try:
        yield n
    finally:
        n.close()


def notify_env(listener: NotifyListener) -> dict[str, str]:
    return {"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)}


def keys(listener: NotifyListener) -> list[str]:
    """The assignments received, in order, as KEY=value (STATUS without its text)."""
    out = []
    for _, fields in listener.received():
        out += [k if k == "STATUS" else f"{k}={v}" for k, v in fields.items()]
    return out


def test_ready_after_the_watch_then_watchdog_then_stopping(
        tmp_path: Path, etcd_endpoint: str, listener: NotifyListener) -> None:
    out = tmp_path / "out"
    out.mkdir()
    hooks = tmp_path / "hooks.d"
    write_hook(hooks, "50-record", RECORDER.format(out=out))
    runner = Runner(tmp_path, etcd_endpoint, "n" + uuid.uuid4().hex[:10], hooks, [],
                    env=notify_env(listener))
    runner.start()
    try:
        wait_until(lambda: bool(listener.received("READY")), 30,
                   lambda: f"no READY=1: {keys(listener)}\n{runner.log_text()}")
        (ready_at, ready), = listener.received("READY")
        assert ready["READY"] == "1"
        saved = int(runner.state_file.read_text())
        assert ready["STATUS"] == f"watching after revision {saved}"

        # The watchdog is fed from the main loop at half of WATCHDOG_USEC.
        wait_until(lambda: len([t for t, _ in listener.received("WATCHDOG")
                                if t > ready_at]) >= 3, 30,
                   lambda: f"watchdog not fed: {keys(listener)}\n{runner.log_text()}")
        assert {f["WATCHDOG"] for _, f in listener.received("WATCHDOG")} == {"1"}

        # Ready means watching: a change made now reaches the hook.
        writer = Store([etcd_endpoint], Keyspace(runner.cluster),
                       DataKey(bytes(32), "k"))
        try:
            writer.put(NodeRecord("node-1", "10.30.0.11", 100, "ready", 4501, "0.1.0",
                                  time.time()))
        finally:
            writer.close()
        wait_until(lambda: len(recorded(out)) == 1, 30, runner.log_text)
        assert recorded(out)[0]["HOOK_EVENT"] == "node-up"

        assert runner.terminate() == 0
    finally:
        runner.stop()
    sent = keys(listener)
    assert sent.count("READY=1") == 1
    assert sent[-1] == "STOPPING=1", sent
    assert sent.index("READY=1") < sent.index("STOPPING=1")
    assert "Traceback" not in runner.log_text()


def test_no_ready_while_etcd_is_down_but_the_watchdog_is_fed(
        tmp_path: Path, listener: NotifyListener) -> None:
    server = EtcdServer(tmp_path / "etcd")            # not started yet
    runner = Runner(tmp_path, server.endpoint, "down", tmp_path / "hooks.d", [],
                    env=notify_env(listener))
    runner.start(wait=False)
    try:
        wait_until(lambda: len(listener.received("WATCHDOG")) >= 3
                   and any("waiting for etcd" in f.get("STATUS", "")
                           for _, f in listener.received()), 60,
                   lambda: f"{keys(listener)}\n{runner.log_text()}")
        assert not listener.received("READY")
        assert not runner.state_file.exists()

        server.start()
        wait_until(lambda: bool(listener.received("READY")), 60,
                   lambda: f"no READY=1 after etcd came: {keys(listener)}\n{runner.log_text()}")
        assert runner.state_file.exists()              # saved before READY=1 was sent
        assert runner.terminate() == 0
    finally:
        runner.stop()
        server.stop()
    assert keys(listener).count("READY=1") == 1
    assert "STOPPING=1" in keys(listener)
    assert "Traceback" not in runner.log_text()


def test_sigterm_before_etcd_answers_stops_cleanly(tmp_path: Path,
                                                   listener: NotifyListener) -> None:
    runner = Runner(tmp_path, EtcdServer(tmp_path / "etcd").endpoint, "never",
                    tmp_path / "hooks.d", [], env=notify_env(listener))
    runner.start(wait=False)
    try:
        wait_until(lambda: any("waiting for etcd" in f.get("STATUS", "")
                               for _, f in listener.received()), 60,
                   lambda: f"{keys(listener)}\n{runner.log_text()}")
        assert runner.terminate() == 0
    finally:
        runner.stop()
    sent = keys(listener)
    assert "READY=1" not in sent
    assert "STOPPING=1" in sent
    assert "Traceback" not in runner.log_text()
