"""cluster-hooks against a real etcd, with a real hook script and a real HTTP receiver."""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from hook_harness import HANGER, RECORDER, Receiver, Runner, recorded, wait_until, write_hook

from cluster.procs import free_port
from cluster.store.client import Store
from cluster.store.keyspace import Keyspace, ike_sa_id
from cluster.store.records import (
    Assignment,
    ChildSaRecord,
    IkeSaRecord,
    NodeRecord,
)
from cluster.store.seal import DataKey

KEY = bytes(range(32))


def node(node_id: str, address: str, state: str = "ready") -> NodeRecord:
    return NodeRecord(node_id, address, 100, state, 4501, "0.1.0",  # type: ignore[arg-type]
                      time.time())


def ike(n: int) -> IkeSaRecord:
    spi_i, spi_r = 0xA000 + n, 0xB000 + n
    return IkeSaRecord(ike_sa_id(spi_i, spi_r), spi_i, spi_r, f"198.51.100.{n}", 4500, 4500,
                       f"user{n}@example.net", f"10.99.0.{n}", [0xC1000000 + n], "keyd-1",
                       time.time(), KEY)


def child(ike_rec: IkeSaRecord, spi_in: int, spi_out: int,
          replaces: int | None = None) -> ChildSaRecord:
    return ChildSaRecord(spi_in, spi_out, ike_rec.ike_sa_id, "aes128gcm16", None, False,
                         KEY[:20], b"", KEY[:20], b"", ["10.20.0.0/16"],
                         [f"{ike_rec.virtual_ip}/32"], ike_rec.peer_addr, ike_rec.peer_port,
                         True, ike_rec.virtual_ip, ike_rec.identity, time.time(), 3000, 3600,
                         replaces)


@pytest.fixture
def store(etcd_endpoint: str) -> Iterator[Store]:
    s = Store([etcd_endpoint], Keyspace("h" + uuid.uuid4().hex[:10]),
              DataKey(os.urandom(32), "test key"))
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def leftovers() -> Iterator[list[int]]:
    """PIDs of hook processes a test learned about: killed at the end if still there."""
    pids: list[int] = []
    try:
        yield pids
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)


def events_of(runs: list[dict[str, Any]]) -> list[str]:
    return [r["HOOK_EVENT"] for r in runs]


def first(runs: list[dict[str, Any]], event: str) -> dict[str, Any]:
    return next(r for r in runs if r["HOOK_EVENT"] == event)


def test_every_event_type_reaches_script_and_webhook(tmp_path: Path, store: Store,
                                                     etcd_endpoint: str,
                                                     receiver: Receiver) -> None:
    out = tmp_path / "out"
    out.mkdir()
    hooks = tmp_path / "hooks.d"
    write_hook(hooks, "50-record", RECORDER.format(out=out))
    write_hook(hooks, ".hidden", "#!/bin/sh\nexit 1\n")           # skipped like run-parts
    (hooks / "README").write_text("not executable: skipped\n")
    runner = Runner(tmp_path, etcd_endpoint, store.keyspace.cluster, hooks, [receiver.url])
    runner.start()
    try:
        lease = store.grant_lease(60)
        store.put(node("node-1", "10.30.0.11"), lease=lease)                  # node-up
        c = ike(1)
        store.put(c)
        store.put(child(c, 0xC1000001, 0xD1000001))
        store.put(Assignment(c.ike_sa_id, "node-1", 1, "active", None, time.time()))  # client-up
        store.put(node("node-2", "10.30.0.12"))                               # node-up
        store.put(node("node-1", "10.30.0.11", "draining"), lease=lease)      # node-draining
        store.put(Assignment(c.ike_sa_id, "node-2", 2, "handoff", "node-1",
                             time.time()))                                    # client-moved
        store.put(child(c, 0xC1000002, 0xD1000002, replaces=0xC1000001))     # sa-rekeyed
        store.delete(IkeSaRecord, c.ike_sa_id)                                # client-down
        store.revoke_lease(lease)                                             # node-down
        expected = ["node-up", "client-up", "node-up", "node-draining", "client-moved",
                    "sa-rekeyed", "client-down", "node-down"]
        wait_until(lambda: len(recorded(out)) >= len(expected)
                   and len(receiver.bodies) >= len(expected), 60,
                   lambda: f"got {events_of(recorded(out))}\n{runner.log_text()}")
    finally:
        runner.stop()

    runs = recorded(out)
    assert events_of(runs) == expected      # one worker per hook: in revision order
    assert [b["event"] for b in receiver.bodies] == expected
    for run in runs:                        # stdin carries the same event as the environment
        assert run["stdin"]["event"] == run["HOOK_EVENT"] == run["argv1"]
        assert run["stdin"]["revision"] == int(run["HOOK_REVISION"])
        assert run["HOOK_CLUSTER"] == store.keyspace.cluster
    assert [r["stdin"] for r in runs] == receiver.bodies
    assert all(h["X-Hook-Event"] == b["event"] for h, b in zip(receiver.headers,
                                                                receiver.bodies, strict=True))

    up = first(runs, "node-up")
    assert (up["HOOK_NODE"], up["HOOK_NODE_ADDRESS"]) == ("node-1", "10.30.0.11")
    client_up = first(runs, "client-up")
    assert client_up["HOOK_CLIENT_ID"] == "user1@example.net"
    assert client_up["HOOK_IKE_SA_ID"] == c.ike_sa_id
    assert client_up["HOOK_VIRTUAL_IP"] == "10.99.0.1"
    assert client_up["HOOK_PEER"] == "198.51.100.1:4500"
    assert (client_up["HOOK_PEER_ADDR"], client_up["HOOK_PEER_PORT"]) == ("198.51.100.1",
                                                                          "4500")
    assert client_up["HOOK_NODE"] == "node-1" and client_up["HOOK_OLD_NODE"] == ""
    assert (client_up["HOOK_SPI_IN"], client_up["HOOK_SPI_OUT"]) == ("c1000001", "d1000001")
    assert first(runs, "node-draining")["HOOK_NODE"] == "node-1"
    moved = first(runs, "client-moved")
    assert (moved["HOOK_NODE"], moved["HOOK_OLD_NODE"], moved["HOOK_EPOCH"]) == (
        "node-2", "node-1", "2")
    assert moved["HOOK_CLIENT_ID"] == "user1@example.net"
    rekeyed = first(runs, "sa-rekeyed")
    assert (rekeyed["HOOK_SPI_IN"], rekeyed["HOOK_SPI_OUT"], rekeyed["HOOK_OLD_SPI_IN"]) == (
        "c1000002", "d1000002", "c1000001")
    assert rekeyed["HOOK_NODE"] == "node-2" and rekeyed["HOOK_VIRTUAL_IP"] == "10.99.0.1"
    down = first(runs, "client-down")
    assert (down["HOOK_CLIENT_ID"], down["HOOK_VIRTUAL_IP"], down["HOOK_NODE"]) == (
        "user1@example.net", "10.99.0.1", "node-2")
    assert down["HOOK_SPI_IN"] == "c1000002"    # the Child SA in use, not the replaced one
    assert first(runs, "node-down")["HOOK_NODE"] == "node-1"
    for body in receiver.bodies:                # no key material in what hooks receive
        assert KEY[:20].hex() not in json.dumps(body)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return stat[0] != "Z"


def test_hanging_hook_is_killed_and_blocks_nothing(tmp_path: Path, store: Store,
                                                   etcd_endpoint: str, receiver: Receiver,
                                                   leftovers: list[int]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    hooks = tmp_path / "hooks.d"
    write_hook(hooks, "10-hang", HANGER.format(out=out))
    write_hook(hooks, "20-record", RECORDER.format(out=out))
    metrics_port = free_port()
    runner = Runner(tmp_path, etcd_endpoint, store.keyspace.cluster, hooks, [receiver.url],
                    timeout_s=8.0, retries=0, metrics=f"127.0.0.1:{metrics_port}")
    runner.start()
    try:
        store.put(node("node-1", "10.30.0.11"))                       # the hanger hangs here
        wait_until(lambda: (out / "hanging.pids").exists(), 30, runner.log_text)
        shell_pid, sleep_pid = map(int, (out / "hanging.pids").read_text().split())
        leftovers += [shell_pid, sleep_pid]
        # the other hook and the webhook got the event while the hanger still hangs
        wait_until(lambda: len(recorded(out)) == 1 and len(receiver.bodies) == 1, 30)
        assert _alive(sleep_pid)
        store.put(node("node-1", "10.30.0.11", "draining"))           # the next event
        # killed at its time-out, with the child in its process group
        wait_until(lambda: not _alive(shell_pid) and not _alive(sleep_pid), 30,
                   runner.log_text)
        wait_until(lambda: (out / "hanger.log").exists(), 30, runner.log_text)
        assert (out / "hanger.log").read_text().split() == ["node-draining"]
        wait_until(lambda: len(recorded(out)) == 2, 30)
        assert events_of(recorded(out)) == ["node-up", "node-draining"]
        assert "timed out after 8s" in runner.log_text()
        exposition = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        assert re.search(r'cluster_hooks_deliveries_total\{result="timeout",'
                         r'target="exec:10-hang"\} 1\.0', exposition), exposition
        assert re.search(r'cluster_hooks_deliveries_total\{result="ok",'
                         r'target="exec:20-record"\} 2\.0', exposition), exposition
    finally:
        runner.stop()


def test_sigkill_between_two_events_loses_neither(tmp_path: Path, store: Store,
                                                  etcd_endpoint: str,
                                                  receiver: Receiver) -> None:
    out = tmp_path / "out"
    out.mkdir()
    hooks = tmp_path / "hooks.d"
    write_hook(hooks, "50-record", RECORDER.format(out=out))
    runner = Runner(tmp_path, etcd_endpoint, store.keyspace.cluster, hooks, [receiver.url])
    runner.start()
    try:
        store.put(node("node-1", "10.30.0.11"))                                   # event A
        a = ike(5)
        store.put(a)
        store.put(child(a, 0xC1000005, 0xD1000005))
        store.put(Assignment(a.ike_sa_id, "node-1", 1, "active", None, time.time()))
        wait_until(lambda: {"node-up", "client-up"} <= {b["event"] for b in receiver.bodies},
                   30, runner.log_text)
        time.sleep(0.5)  # let it save the revision (not required: a replay is allowed)
        runner.kill()                                                           # SIGKILL

        # while the runner is dead: a client moves, another arrives, the first one leaves
        store.put(node("node-2", "10.30.0.12"))
        store.put(Assignment(a.ike_sa_id, "node-2", 2, "handoff", "node-1", time.time()))
        b = ike(6)
        store.put(b)
        store.put(Assignment(b.ike_sa_id, "node-2", 1, "active", None, time.time()))
        store.delete(IkeSaRecord, a.ike_sa_id)

        runner.start()
        want = {("node-up", "node-2"), ("client-moved", "user5@example.net"),
                ("client-up", "user6@example.net"), ("client-down", "user5@example.net")}

        def got(bodies: list[dict[str, Any]]) -> set[tuple[str, str]]:
            return {(e["event"], e["client_id"] or e["node"]) for e in bodies}

        wait_until(lambda: want <= got(receiver.bodies)
                   and want <= got([r["stdin"] for r in recorded(out)]), 60,
                   lambda: f"webhook got {got(receiver.bodies)}\n{runner.log_text()}")
    finally:
        runner.stop()
    events = [(e["event"], e["client_id"] or e["node"]) for e in receiver.bodies]
    # nothing misread after the restart: the moved client is moved, not new
    assert ("client-up", "user5@example.net") not in events[events.index(
        ("client-moved", "user5@example.net")):]
    moved = next(e for e in receiver.bodies if e["event"] == "client-moved")
    assert (moved["old_node"], moved["node"]) == ("node-1", "node-2")
    # the revision file moved past everything delivered
    saved = int(runner.state_file.read_text())
    assert saved >= max(e["revision"] for e in receiver.bodies) - 1


def test_bad_config_is_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys
    bad = tmp_path / "bad.toml"
    bad.write_text("[hooks]\ntimeout_s = 'soon'\n")
    done = subprocess.run([sys.executable, "-m", "cluster.hooks.main", "--config", str(bad)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and str(bad) in done.stderr
    missing = subprocess.run([sys.executable, "-m", "cluster.hooks.main", "--config",
                              str(tmp_path / "nope.toml")], capture_output=True, text=True,
                             timeout=60, check=False)
    assert missing.returncode == 2 and "nope.toml" in missing.stderr
    assert "Traceback" not in done.stderr + missing.stderr




def test_restart_after_compaction_reports_who_left(tmp_path: Path, store: Store,
                                                   etcd_endpoint: str,
                                                   receiver: Receiver) -> None:
    """Runner stopped, a client leaves and a node arrives, etcd compacts the history: on
    restart the runner still reports both (from its saved state), and nothing else twice."""
    runner = Runner(tmp_path, etcd_endpoint, store.keyspace.cluster, tmp_path / "none",
                    [receiver.url])
    runner.start()
    try:
        store.put(node("node-1", "10.30.0.11"))
        a, b = ike(8), ike(9)
        for rec in (a, b):
            store.put(rec)
            store.put(Assignment(rec.ike_sa_id, "node-1", 1, "active", None, time.time()))
        wait_until(lambda: len(receiver.bodies) == 3, 30, runner.log_text)
    finally:
        runner.stop()                                    # SIGTERM: saves its state
    assert Path(str(runner.state_file) + ".snapshot").exists()
    store.delete(IkeSaRecord, a.ike_sa_id)
    store.delete(Assignment, a.ike_sa_id)
    store.put(node("node-2", "10.30.0.12"))
    store.raw.compact(store.revision())
    before = len(receiver.bodies)
    runner.start()
    try:
        wait_until(lambda: len(receiver.bodies) >= before + 2, 60, runner.log_text)
        time.sleep(1.0)                                  # anything else would come now
    finally:
        runner.stop()
    after = [(e["event"], e["client_id"] or e["node"]) for e in receiver.bodies[before:]]
    assert sorted(after) == [("client-down", "user8@example.net"), ("node-up", "node-2")]
    assert "starting from the state saved at revision" in runner.log_text()


def test_runner_survives_an_etcd_restart(tmp_path: Path, receiver: Receiver) -> None:
    from cluster.procs import EtcdServer
    server = EtcdServer(tmp_path / "etcd")
    server.start()
    writer = Store([server.endpoint], Keyspace("restart"), DataKey(os.urandom(32), "k"))
    runner = Runner(tmp_path, server.endpoint, "restart", tmp_path / "none", [receiver.url])
    try:
        runner.start()
        writer.put(node("node-1", "10.30.0.11"))
        wait_until(lambda: len(receiver.bodies) == 1, 30, runner.log_text)
        server.stop()
        time.sleep(2.0)                                  # the runner notices etcd is gone
        server.start()
        writer.close()
        writer = Store([server.endpoint], Keyspace("restart"), DataKey(os.urandom(32), "k"))
        writer.put(node("node-2", "10.30.0.12"))
        wait_until(lambda: len(receiver.bodies) == 2, 60, runner.log_text)
        assert receiver.bodies[1]["node"] == "node-2"
        assert "watch interrupted" in runner.log_text()
        assert "Traceback" not in runner.log_text()
    finally:
        runner.stop()
        writer.close()
        server.stop()
