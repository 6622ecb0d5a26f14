"""sd_notify against a real AF_UNIX datagram socket standing where systemd's would be."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster import systemd


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, dict[str, str]]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.settimeout(5)
    try:
        yield sock, {"NOTIFY_SOCKET": str(path)}
    finally:
        sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[socket.socket, dict[str, str]]]:
    name = f"ipsec-cluster-test-{os.getpid()}-{id(object())}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(5)
    try:
        yield sock, {"NOTIFY_SOCKET": "@" + name}
    finally:
        sock.close()


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_ready_with_status_is_one_datagram(
        notify_socket: tuple[socket.socket, dict[str, str]]) -> None:
    sock, env = notify_socket
    assert systemd.notify_ready("lease held, 42 SAs loaded", env=env)
    assert received(sock) == ["READY=1", "STATUS=lease held, 42 SAs loaded"]


def test_abstract_socket_name(abstract_socket: tuple[socket.socket, dict[str, str]]) -> None:
    sock, env = abstract_socket
    assert systemd.notify_ready(env=env)
    assert received(sock) == ["READY=1"]


def test_status_watchdog_stopping(notify_socket: tuple[socket.socket, dict[str, str]]) -> None:
    sock, env = notify_socket
    assert systemd.notify_status("draining:\n3 clients left", env=env)
    assert received(sock) == ["STATUS=draining: 3 clients left"]
    assert systemd.notify_watchdog(env=env)
    assert received(sock) == ["WATCHDOG=1"]
    assert systemd.notify_stopping("bye", env=env)
    assert received(sock) == ["STOPPING=1", "STATUS=bye"]


def test_process_environment_is_the_default(
        notify_socket: tuple[socket.socket, dict[str, str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    sock, env = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", env["NOTIFY_SOCKET"])
    assert systemd.notify_watchdog()
    assert received(sock) == ["WATCHDOG=1"]


def test_outside_systemd_is_a_no_op() -> None:
    assert systemd.notify_ready(env={}) is False
    assert systemd.notify_watchdog(env={"NOTIFY_SOCKET": ""}) is False


def test_unsupported_or_dead_socket_is_reported_not_raised(tmp_path: Path) -> None:
    assert systemd.notify_ready(env={"NOTIFY_SOCKET": "relative/path"}) is False
    assert systemd.notify_ready(env={"NOTIFY_SOCKET": "vsock:2:1234"}) is False
    assert systemd.notify_ready(env={"NOTIFY_SOCKET": str(tmp_path / "nobody")}) is False


def test_full_receiver_queue_does_not_block(
        notify_socket: tuple[socket.socket, dict[str, str]]) -> None:
    _, env = notify_socket
    results = [systemd.notify_watchdog(env=env) for _ in range(1000)]
    assert results[0] is True
    assert results[-1] is False


def test_a_newline_cannot_smuggle_an_assignment(
        notify_socket: tuple[socket.socket, dict[str, str]]) -> None:
    sock, env = notify_socket
    assert systemd.notify_status("ok\nREADY=1", env=env)
    assert received(sock) == ["STATUS=ok READY=1"]


def test_malformed_assignment_is_a_caller_error() -> None:
    with pytest.raises(ValueError):
        systemd.notify("READY", env={})


@pytest.mark.parametrize(("env", "expected"), [
    ({}, None),
    ({"WATCHDOG_USEC": "3000000"}, 1.5),
    ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "4242"}, 1.5),
    ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "4243"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "-5"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "me"}, None),
])
def test_watchdog_interval_is_half_the_timeout(env: dict[str, str],
                                               expected: float | None) -> None:
    assert systemd.watchdog_interval_s(env=env, pid=4242) == expected


def test_watchdog_interval_defaults_to_own_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval_s() == 0.5


def test_feed_watchdog_pings_until_cancelled(
        notify_socket: tuple[socket.socket, dict[str, str]]) -> None:
    sock, env = notify_socket

    async def run() -> None:
        task = asyncio.create_task(systemd.feed_watchdog(0.05, env=env))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    sock.settimeout(0)
    pings = []
    while True:
        try:
            pings.append(sock.recv(4096))
        except BlockingIOError:
            break
    assert len(pings) >= 2
    assert set(pings) == {b"WATCHDOG=1"}


def test_start_watchdog_only_when_asked(
        notify_socket: tuple[socket.socket, dict[str, str]]) -> None:
    sock, env = notify_socket

    async def run() -> None:
        assert systemd.start_watchdog(env=env) is None  # no WATCHDOG_USEC
        task = systemd.start_watchdog(env={**env, "WATCHDOG_USEC": "100000"})
        assert task is not None
        await asyncio.sleep(0.12)
        task.cancel()

    asyncio.run(run())
    assert sock.recv(64) == b"WATCHDOG=1"
    assert sock.recv(64) == b"WATCHDOG=1"


def test_watchdog_ticker_pings_at_half_the_timeout() -> None:
    import socket as _socket
    import tempfile

    from cluster.systemd import WatchdogTicker

    with tempfile.TemporaryDirectory() as d:
        path = f"{d}/notify"
        with _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM) as rx:
            rx.bind(path)
            rx.setblocking(False)
            env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"}
            ticker = WatchdogTicker(env)
            assert ticker.interval_s == 1.0
            got = []
            for now in (0.0, 0.5, 0.99, 1.0, 1.5, 2.1):
                ticker.tick(now)
                try:
                    while True:
                        got.append((now, rx.recv(64)))
                except BlockingIOError:
                    pass
            assert got == [(0.0, b"WATCHDOG=1"), (1.0, b"WATCHDOG=1"), (2.1, b"WATCHDOG=1")]


def test_watchdog_ticker_is_silent_without_a_watchdog() -> None:
    from cluster.systemd import WatchdogTicker

    ticker = WatchdogTicker({"NOTIFY_SOCKET": "/nonexistent"})
    assert ticker.interval_s is None
    ticker.tick(100.0)  # nothing to send, nothing raised
