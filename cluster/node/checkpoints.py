"""The node's seq/ records in etcd: checkpoints written, take-overs read, finals written.

The I/O side of cluster.node.counters (what to write, when) and of the ownership core's
`ReadSeqs` / `WriteFinal`: one writer thread for checkpoints, reads and final writes on the
agent's etcd pool. Nothing here runs on the control thread but `tick` (which only queues);
results come back through the callbacks, which post to the control thread.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cluster.node.counters import Checkpointer, Due, is_final_for, seq_record
from cluster.node.events import ReadSeqs, SeqRead, WriteFinal
from cluster.node.membership import StoreRef
from cluster.node.plane import DataPlane
from cluster.store import Guard, SeqRecord, Store, StoreError

log = logging.getLogger("cluster.node")

RETRY_S = 0.5
#: unplanned take-overs whose seq records are read together (etcd transactions of 128 gets)
SEQ_READ_BATCH = 1024


@dataclass(slots=True)
class CheckpointStats:
    written: int = 0
    failures: int = 0


class Checkpoints:
    """Checkpoints of the SAs the node owns: `tick` queues what is due to the writer thread;
    `on_written(done, failed)` is called (writer thread) with each batch's outcome, for the
    control thread's `written`."""

    def __init__(self, ref: StoreRef, checkpointer: Checkpointer, plane: DataPlane,
                 revision: Callable[[str], int | None],
                 on_written: Callable[[list[SeqRecord], list[SeqRecord]], None]) -> None:
        self.ref = ref
        self.checkpointer = checkpointer
        self.plane = plane
        self.revision = revision
        self.on_written = on_written
        self.stats = CheckpointStats()
        self._writes: queue.SimpleQueue[list[tuple[SeqRecord, Guard]] | None] = \
            queue.SimpleQueue()
        self._busy = False
        self._failures = 0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="node-checkpoints",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._writes.put(None)
        if self._thread is not None:
            self._thread.join(5)

    def tick(self, now: float, wall: float) -> None:
        """Control thread: queue the checkpoints due (one batch in flight at a time)."""
        marks = self.checkpointer.marks
        if not marks or self._busy:
            return
        current = self.plane.moved_counters(marks, self.checkpointer.forced())
        due = self.checkpointer.due({s: c for s, (c, _) in current.items()}, now, wall,
                                    {s: t for s, (_, t) in current.items()})
        batch = [(d.record, g) for d in due if (g := self._guard(d)) is not None]
        # never unguarded: a checkpoint is only valid under the assignment it was made for
        self.checkpointer.failed([d.record for d in due if self._guard(d) is None])
        if batch:
            self._busy = True
            self._writes.put(batch)

    def written(self, done: list[SeqRecord], failed: list[SeqRecord], now: float) -> None:
        """Control thread: a batch's outcome; acknowledged checkpoints raise send limits."""
        self._busy = False
        self.checkpointer.acked(done, now)
        self.checkpointer.failed(failed)
        self.stats.written += len(done)
        if failed:
            self.stats.failures += 1  # retried by the next tick
        self.plane.raise_send_limits({r.spi: self.checkpointer.send_limit(r.spi)
                                      for r in done})

    def _guard(self, d: Due) -> Guard | None:
        rev = self.revision(d.ike_sa_id)
        return None if rev is None else Guard(self.ref.store.keyspace.assign(d.ike_sa_id), rev)

    def _loop(self) -> None:
        while True:
            batch = self._writes.get()
            if batch is None:
                return
            done: list[SeqRecord] = []
            failed: list[SeqRecord] = []
            for i in range(0, len(batch), 100):
                chunk = batch[i:i + 100]
                records = [r for r, _ in chunk]
                guards = list({g.key: g for _, g in chunk}.values())
                store = self.ref.store
                try:
                    ok = store.commit(records, guards=guards)
                except StoreError as e:
                    log.warning("checkpoints queued, etcd unavailable: %s", e)
                    failed.extend(records)
                    self._failures += 1
                    if self._failures % 5 == 0:
                        self.ref.reconnect(store)
                    continue
                self._failures = 0
                if ok:
                    done.extend(records)
                    continue
                # one client's assignment moved: write the others one by one
                for r, g in chunk:
                    try:
                        single = self.ref.store.commit([r], guards=[g])
                    except StoreError:
                        single = False
                    (done if single else failed).append(r)
            self.on_written(done, failed)


class SeqReader:
    """Take-overs' reads of seq/ (`ReadSeqs`); the records go to `on_read(items)`. Reads of
    unplanned take-overs queued meanwhile are made together, in a few etcd transactions."""

    def __init__(self, ref: StoreRef, pool: ThreadPoolExecutor,
                 on_read: Callable[[list[SeqRead]], None],
                 stopping: Callable[[], bool]) -> None:
        self.ref = ref
        self.pool = pool
        self.on_read = on_read
        self.stopping = stopping
        self._queued: queue.SimpleQueue[ReadSeqs] = queue.SimpleQueue()
        self._reading = threading.Lock()

    def read(self, req: ReadSeqs) -> None:
        if not req.wait_final_s:
            # no final record to wait for: read with every other take-over queued meanwhile
            self._queued.put(req)
            if self._reading.acquire(blocking=False):
                self.pool.submit(self._read_queued)
            return
        self.pool.submit(self._await_final, req)

    def _await_final(self, req: ReadSeqs) -> None:
        """A planned take-over: read until every record is the old owner's final (or the
        wait ran out); the final record arrives by a watch, a slow poll covers a lost one."""
        deadline = time.monotonic() + req.wait_final_s
        changed = threading.Event()
        watches = self._watch_seq(req.spis, changed)
        try:
            while not self.stopping():
                store = self.ref.store
                changed.clear()
                try:
                    seqs = {s: (v.record if (v := store.get(SeqRecord, s)) else None)
                            for s in req.spis}
                except StoreError as e:
                    log.warning("take-over of %s waits for etcd: %s", req.ike_sa_id, e)
                    self.ref.reconnect(store)
                    time.sleep(RETRY_S)
                    continue
                except Exception as e:  # a malformed seq record: treat as absent
                    log.warning("take-over of %s: unreadable seq record (%s)", req.ike_sa_id,
                                e)
                    seqs = dict.fromkeys(req.spis)
                left = deadline - time.monotonic()
                if all(is_final_for(r, req.assignment) for r in seqs.values()) or left <= 0:
                    self.on_read([(req.ike_sa_id, req.assignment, seqs)])
                    return
                changed.wait(min(left, 0.2 if watches else 0.02))
        finally:
            self._unwatch(watches)

    def _read_queued(self) -> None:
        try:
            while not self.stopping():
                batch: list[ReadSeqs] = []
                while len(batch) < SEQ_READ_BATCH:
                    try:
                        batch.append(self._queued.get_nowait())
                    except queue.Empty:
                        break
                if not batch:
                    return
                spis = {s for req in batch for s in req.spis}
                while not self.stopping():
                    store = self.ref.store
                    try:
                        # a record that does not decode reads as absent (the take-over
                        # jumps); the store logs it with its key
                        got = store.get_many(SeqRecord, spis, strict=False)
                    except StoreError as e:
                        log.warning("take-over of %d clients waits for etcd: %s",
                                    len(batch), e)
                        self.ref.reconnect(store)
                        time.sleep(RETRY_S)
                        continue
                    self.on_read([(req.ike_sa_id, req.assignment,
                                   {s: (v.record if (v := got.get(s)) else None)
                                    for s in req.spis}) for req in batch])
                    break
        finally:
            self._reading.release()
            # queued after the last look and before the release: read those too
            if not self.stopping() and not self._queued.empty() \
                    and self._reading.acquire(blocking=False):
                self.pool.submit(self._read_queued)

    def _watch_seq(self, spis: frozenset[int],
                   changed: threading.Event) -> list[tuple[Store, int]]:
        """Watch seq/<spi> of these SAs, setting `changed` on any write. Empty if etcd
        cannot set the watch up (the caller polls)."""
        store = self.ref.store
        out: list[tuple[Store, int]] = []
        try:
            for spi in spis:
                key = store.keyspace.seq(spi)
                out.append((store, store.raw.add_watch_callback(
                    key, lambda _resp: changed.set())))
        except Exception as e:
            log.info("watching seq records failed (%s): polling", e)
            self._unwatch(out)
            return []
        return out

    @staticmethod
    def _unwatch(watches: list[tuple[Store, int]]) -> None:
        for store, watch_id in watches:
            with contextlib.suppress(Exception):
                store.raw.cancel_watch(watch_id)


def write_final(ref: StoreRef, pool: ThreadPoolExecutor, node_id: str, req: WriteFinal,
                plane: DataPlane, wall: float, done: Callable[[WriteFinal, bool], None]) -> None:
    """Our exact counters of a handed-off client as `final` records, guarded by the hand-off
    assignment; retried while etcd fails; `done(req, ok)` after (pool thread)."""
    counters = plane.counters(req.spis)
    records = [seq_record(s, node_id, req.assignment.epoch, c, "final", wall, t)
               for s, (c, t) in counters.items()]
    guard = Guard(ref.store.keyspace.assign(req.ike_sa_id), req.revision)
    k, epoch = req.ike_sa_id, req.assignment.epoch

    def write() -> None:
        ok = False
        try:
            for attempt in range(10):
                try:
                    ok = ref.store.commit(records, guards=[guard])
                    log.info("final counters for %s at epoch %d: %s", k, epoch,
                             "written" if ok else "assignment changed, not written")
                    return
                except StoreError as e:
                    log.warning("final counters for %s not written (%s), retry %d", k, e,
                                attempt)
                    time.sleep(RETRY_S)
        finally:
            done(req, ok)
    pool.submit(write)
