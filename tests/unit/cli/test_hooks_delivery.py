"""Delivery machinery with real processes: time-outs, retries, bounded queues, the ledger."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cluster.hooks.dispatch import Dispatcher, RetryPolicy, Worker
from cluster.hooks.event import HookEvent
from cluster.hooks.ledger import DeliveryLedger, RevisionFile
from cluster.hooks.targets import Outcome, ProcessTarget, Target, scan_directory


def hook(tmp: Path, name: str, body: str) -> Path:
    p = tmp / name
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(0o755)
    return p


def wait(pred, timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


EVENT = HookEvent("node-up", 7, "prod", node="n1", node_address="10.0.0.1")


def test_process_gets_env_stdin_and_argument(tmp_path: Path) -> None:
    out = tmp_path / "out"
    target = ProcessTarget(hook(tmp_path, "h", f'echo "$1 $HOOK_NODE" > {out}; cat >> {out}\n'),
                           10)
    assert target.deliver(EVENT).ok
    first, body = out.read_text().split("\n", 1)
    assert first == "node-up n1" and '"node_address": "10.0.0.1"' in body


def test_process_failure_and_timeout_kill_the_group(tmp_path: Path) -> None:
    failing = ProcessTarget(hook(tmp_path, "f", "echo broken >&2; exit 3\n"), 10)
    outcome = failing.deliver(EVENT)
    assert not outcome.ok and outcome.detail == "exit 3: broken"
    pids = tmp_path / "pids"
    hanging = ProcessTarget(hook(tmp_path, "h", f"sleep 600 & echo $! > {pids}; wait\n"), 0.5)
    outcome = hanging.deliver(EVENT)
    assert outcome.timed_out and not outcome.ok
    child = int(pids.read_text())
    wait(lambda: not Path(f"/proc/{child}").exists()
         or Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z")


def test_missing_executable(tmp_path: Path) -> None:
    outcome = ProcessTarget(tmp_path / "gone", 1).deliver(EVENT)
    assert not outcome.ok and "cannot run" in outcome.detail


def test_scan_directory_like_run_parts(tmp_path: Path) -> None:
    hook(tmp_path, "20-b", "")
    hook(tmp_path, "10-a", "")
    hook(tmp_path, ".hidden", "")
    hook(tmp_path, "x~", "")
    hook(tmp_path, "y.dpkg-old", "")
    (tmp_path / "plain").write_text("not executable")
    (tmp_path / "dir").mkdir()
    assert [p.name for p in scan_directory(tmp_path)] == ["10-a", "20-b"]
    assert scan_directory(tmp_path / "missing") == []


class Flaky(Target):
    """Fails `failures` times, then succeeds; records attempt times."""

    def __init__(self, failures: int, retry: bool = True) -> None:
        self.name = "flaky"
        self.failures = failures
        self.retry = retry
        self.attempts: list[float] = []

    def deliver(self, event: HookEvent) -> Outcome:
        self.attempts.append(time.monotonic())
        if len(self.attempts) <= self.failures:
            return Outcome(False, "nope", retry=self.retry)
        return Outcome(True, "ok")


def test_retries_with_backoff_then_success() -> None:
    ledger = DeliveryLedger()
    target = Flaky(2)
    worker = Worker(target, RetryPolicy(retries=3, backoff_s=0.1), 10)
    ledger.add(7)
    assert worker.offer(EVENT, ledger)
    wait(lambda: ledger.in_flight == 0)
    assert len(target.attempts) == 3
    gaps = [b - a for a, b in zip(target.attempts, target.attempts[1:], strict=False)]
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2          # doubling back-off
    worker.stop()


def test_gives_up_after_retries_and_on_permanent_failure() -> None:
    ledger = DeliveryLedger()
    always = Flaky(100)
    worker = Worker(always, RetryPolicy(retries=2, backoff_s=0.01), 10)
    ledger.add(7)
    worker.offer(EVENT, ledger)
    wait(lambda: ledger.in_flight == 0)
    assert len(always.attempts) == 3
    permanent = Flaky(100, retry=False)
    worker2 = Worker(permanent, RetryPolicy(retries=5, backoff_s=0.01), 10)
    ledger.add(7)
    worker2.offer(EVENT, ledger)
    wait(lambda: ledger.in_flight == 0)
    assert len(permanent.attempts) == 1
    worker.stop()
    worker2.stop()


def test_full_queue_drops_for_that_target_only(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    hook(hooks, "slow", f"while [ ! -e {gate} ]; do sleep 0.05; done\n")
    log = tmp_path / "fast.log"
    hook(hooks, "fast", f'echo "$HOOK_REVISION" >> {log}\n')
    d = Dispatcher(hooks, [], 30, RetryPolicy(0, 0.01), queue_size=2)
    ledger = DeliveryLedger()
    for rev in range(1, 6):
        d.dispatch(HookEvent("node-up", rev), ledger)
        time.sleep(0.1)  # "slow" takes event 1 off its queue, then its queue fills
    ledger.observe(5)
    # the fast hook got everything while the slow one is stuck on the first
    wait(lambda: log.exists() and log.read_text().split() == ["1", "2", "3", "4", "5"])
    assert ledger.committed == 0
    gate.touch()
    wait(lambda: ledger.in_flight == 0)
    assert ledger.committed == 5                      # dropped deliveries are finished too
    d.stop()


def test_ledger_commits_only_contiguous_revisions() -> None:
    ledger = DeliveryLedger(10)
    assert ledger.committed == 10
    ledger.add(12)
    ledger.add(12)
    ledger.add(15)
    ledger.observe(20)
    assert ledger.committed == 11
    ledger.finish(12)
    assert ledger.committed == 11
    ledger.finish(12)
    assert ledger.committed == 14
    ledger.finish(15)
    assert ledger.committed == 20 and ledger.in_flight == 0


def test_revision_file(tmp_path: Path) -> None:
    f = RevisionFile(tmp_path / "sub" / "hooks.revision")
    assert f.load() is None
    f.save(42)
    assert f.load() == 42
    f.path.write_text("garbage")
    with pytest.raises(ValueError, match="not a revision"):
        f.load()
