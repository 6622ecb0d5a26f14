"""The `keyd` daemon: asyncio glue around the IKE core, the etcd store and the UDP endpoints.

Bytes in from the sockets → `Engine.step` (the core) → group commit → bytes out. Everything
runs on the event loop's own thread: handing datagrams or writes to a worker thread and
back cost thread wake-ups per message, milliseconds on a busy machine. A step's writes wait
in a queue while the loop reads whatever else waits in the sockets; then one etcd
transaction makes every waiting step durable (`Persister.write_batch`), and each step's
replies are released. While a write waits for etcd, datagrams wait in the socket buffers
and go into the next write together. Messages for an IKE SA with a step in flight wait
behind it. Watch callbacks (their own threads) are handed to the loop, so the engine is
only ever entered from it.

Around that: registration in `keyd/<id>` on a lease (re-registered after a loss), a watch on
`ike/` so an IKE SA continued by another instance is dropped here, the core's timers, a
sweeper for what dead instances left behind, an etcd probe while etcd is away, and the
Prometheus endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import click

from cluster import systemd
from cluster.store.client import Store
from cluster.store.errors import StoreError
from cluster.store.keyspace import Keyspace
from cluster.store.membership import LeaseLost, Membership
from cluster.store.records import IkeSaRecord, KeydRecord
from cluster.store.seal import DataKey, DataKeyError, load_data_key
from cluster.store.watch import RecordDeleted, RecordPut, WatchEvent, WatchResynced

from .config import DEFAULT_PATH, ConfigError, KeydConfig, load_config, parse_listen
from .core import build_core, radius_servers, responder_config
from .core import secrets as keyd_secrets
from .engine import Engine, Outbound, Step, ike_sa_id_of
from .ike.events import RadiusRequested
from .ike.responder import Responder
from .logs import setup_logging
from .metrics import KeydMetrics
from .pool import AddressPool
from .radius import RadiusTiming, radius_exchange
from .udp import IkeEndpoints, Inbound
from .view import ClusterView

log = logging.getLogger("keyd")

VERSION = "0.1.0"
LEASE_TTL_S = 5
#: steps written together at most (each transaction stays under etcd's 128 operations)
COMMIT_BATCH_MAX = 64
#: a half-open IKE SA is written from this long after its IKE_SA_INIT answer on — unless
#: its IKE_AUTH reaches this instance first: then the IKE_AUTH step writes it whole, in one
#: round trip instead of two (docs/keyd.md, "Half-open IKE SAs")
HALF_OPEN_WRITE_DELAY_S = 0.05
#: ... with the next write keyd makes anyway, or on its own this much later
HALF_OPEN_RIDE_MAX_S = 0.2
#: removals of answered DELETEs, and owners of removed IKE SAs, ride with the next write;
#: if none comes, they go on their own this much later
RIDE_WAIT_S = 0.05
#: an IKE_AUTH for an IKE SA held nowhere is tried again after these delays (the instance
#: that answered its IKE_SA_INIT writes the half-open state a moment later)
HALF_OPEN_RETRY_S = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


@dataclass(slots=True)
class _Held:
    """An IKE SA with steps in flight: how many, and the messages that wait for them."""

    steps: int = 0
    waiting: list[Inbound] = field(default_factory=list)


class KeydServer:
    def __init__(self, config: KeydConfig, data_key: DataKey) -> None:
        self.config = config
        k = config.keyd
        e = config.etcd
        keyspace = Keyspace(config.cluster.name, config.cluster.prefix)
        self.store = Store(e.endpoints, keyspace, data_key, cacert=e.cacert, cert=e.cert,
                           key=e.key, timeout_s=e.timeout_s)
        self.metrics = KeydMetrics()
        self.view = ClusterView()
        self.pool = AddressPool(self.store, k.pool, k.id, view=self.view)
        # one pool object per network the connections name (they share pool/<ip> leases)
        self.pools = {net: AddressPool(self.store, net, k.id, view=self.view)
                      for net in dict.fromkeys(n for c in config.connections
                                               for n in (c.pool, c.pool6) if n)
                      if net != k.pool}
        self.pools[k.pool] = self.pool
        responder_config(config)  # credentials and proposals: fail now, before binding
        self.core: Responder | None = None
        self._engine: Engine | None = None
        self.endpoints = IkeEndpoints(k.vip, k.ike_port, k.natt_port, self._enqueue,
                                      self._dropped, self._sent)
        self._tasks: list[asyncio.Task[None]] = []
        self._membership: Membership | None = None
        self._lease_lost = asyncio.Event()
        self._watcher: Any = None          # ike/: only while other instances exist
        self._keyd_watcher: Any = None
        self._peers: set[str] = set()       # other keyd instances registered
        self._peers_synced = False
        self._ike_synced = False
        self._stopping = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._systemd_watchdog: asyncio.Task[None] | None = None
        self._ready_said = False
        # steps waiting for their write (group commit), and the messages that wait for them
        self._pending: list[Step] = []
        self._commit_scheduled = False
        self._arrivals = 0                  # datagrams received so far
        self._removals_timer: asyncio.TimerHandle | None = None
        self._held: dict[str, _Held] = {}
        self._half_open: dict[str, asyncio.TimerHandle] = {}   # IKE SA → its write, later
        self._riding: dict[str, Step] = {}   # half-open IKE SA → its write, with the next
        self._riding_timer: asyncio.TimerHandle | None = None
        self._radius_servers = radius_servers(config)
        self._radius_timing = RadiusTiming(k.radius_timeout_s, k.radius_tries)
        self._radius_tasks: set[asyncio.Future[None]] = set()

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.endpoints.open()
        ike_port, natt_port = self.endpoints.ports
        # the core frames NAT-T datagrams by port: give it the port actually bound
        self.core = build_core(self.config, natt_port)
        self._engine = Engine(self.core, self.store, self.pool, self.config.keyd.id,
                              self.metrics, view=self.view, pools=self.pools)
        log.info("listening", extra={"vip": self.config.keyd.vip, "ike_port": ike_port,
                                     "natt_port": natt_port, "id": self.config.keyd.id})
        if self.config.metrics.listen:
            host, port = parse_listen(self.config.metrics.listen)
            try:
                self.metrics.serve(host, port)
            except OSError as exc:
                log.error("metrics endpoint not served", extra={
                    "listen": self.config.metrics.listen, "error": exc.strerror})
        self._start_ike_watch()
        self._keyd_watcher = self.store.watch(KeydRecord, self._on_keyd)
        self.view.start(self.store)
        self._systemd_watchdog = systemd.start_watchdog()
        self._tasks = [
            asyncio.create_task(self._supervised(self._timers), name="keyd-timers"),
            asyncio.create_task(self._supervised(self._register), name="keyd-register"),
            asyncio.create_task(self._supervised(self._etcd_probe), name="keyd-etcd-probe"),
            asyncio.create_task(self._supervised(self._sweeper), name="keyd-sweeper"),
        ]

    async def stop(self) -> None:
        self._stopping.set()
        systemd.notify_stopping()
        if self._systemd_watchdog is not None:
            self._systemd_watchdog.cancel()
        self.endpoints.close()
        for future in list(self._radius_tasks):
            future.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._removals_timer is not None:
            self._removals_timer.cancel()
        if self._engine is not None and self.engine.etcd_ok:
            # removals of answered DELETEs that wait for a ride, then their owners: written
            # now rather than left to the sweeper (best effort: etcd may be slow or away)
            for _ in range(2):
                with contextlib.suppress(Exception):
                    self.engine.persister.flush_removals()
        for w in (self._watcher, self._keyd_watcher):
            if w is not None:
                await asyncio.to_thread(w.stop)
        await asyncio.to_thread(self.view.stop)
        if self._membership is not None:
            await asyncio.to_thread(self._membership.stop)
        with contextlib.suppress(StoreError):
            self.store.close()

    async def _supervised(self, body: Any) -> None:
        """Run a background duty; if it fails unexpectedly, say so in one line and run it
        again a second later — a bug in a side duty must not stop the daemon quietly."""
        while True:
            try:
                await body()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("background task failed; restarting it", extra={
                    "task": body.__name__, "error": f"{type(exc).__name__}: {exc}"})
                log.debug("background task failure", exc_info=True)
                await asyncio.sleep(1.0)

    @staticmethod
    def _loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        log.error("unexpected error in the event loop", extra={
            "error": f"{type(exc).__name__}: {exc}" if exc else context.get("message", "?")})

    async def run_until_signalled(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(self._loop_exception)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload_secrets)
        await self.start()
        try:
            await self._stopping.wait()
        finally:
            log.info("stopping")
            await self.stop()

    def reload_secrets(self) -> bool:
        """SIGHUP: read the secrets file again. New PSKs and EAP passwords apply from the
        next IKE_AUTH on; no SA is touched. A file that does not read keeps the secrets in
        use (logged, counted)."""
        if self.core is None:
            return False
        try:
            fresh = keyd_secrets(self.config)
        except ConfigError as exc:
            log.error("secrets not reloaded; keeping those in use", extra={"error": str(exc)})
            self.metrics.secrets_reloads.labels("failed").inc()
            return False
        self.core.use_secrets(fresh)
        psks, users = fresh.counts
        log.info("secrets reloaded", extra={"psks": psks, "eap_users": users})
        self.metrics.secrets_reloads.labels("ok").inc()
        return True

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("keyd is not started")
        return self._engine

    # -- datagrams -------------------------------------------------------------------------
    # A step runs the core at once; what it must write goes to the committer, which writes
    # every step waiting for it in shared transactions (group commit) and releases each
    # step's replies when its write is done. Until then, further messages for the IKE SAs
    # the step changed wait here (in order), so each IKE SA has at most one step in flight.
    def _enqueue(self, inbound: Inbound, attempt: int = 0) -> None:
        if not attempt:
            self._arrivals += 1
            self.metrics.child(self.metrics.datagrams_in, str(inbound.dst[1])).inc()
        header = ike_sa_id_of(inbound.data, inbound.ike_offset)
        ike_sa_id = header[0]
        held = self._held.get(ike_sa_id)
        if held is not None:
            held.waiting.append(inbound)
            return
        try:
            step = self.engine.step(inbound, may_wait=attempt < len(HALF_OPEN_RETRY_S),
                                    header=header)
        except Exception as exc:  # the edge: a bug must cost one message, not the daemon
            log.error("message not handled", extra={"error": f"{type(exc).__name__}: {exc}",
                                                    "peer": f"{inbound.src[0]}"})
            self.metrics.dropped.labels("internal_error").inc()
            return
        if step.waiting_for is not None and self._loop is not None:
            # maybe another instance's write of this half-open IKE SA is on its way
            self._loop.call_later(HALF_OPEN_RETRY_S[attempt], self._enqueue, inbound,
                                  attempt + 1)
            return
        self._after_step(step)

    def _after_step(self, step: Step) -> None:
        """Send what may leave now, hand the writes to the committer, start RADIUS rounds."""
        for request in step.radius:
            self._radius_tasks.add(asyncio.ensure_future(self._radius(request)))
        self._send(step.release_now())
        # a half-open IKE SA whose state this step writes anew (or removed) needs no write
        # of its own any more
        for ike_sa_id in (*step.changes.ike_puts, *step.changes.deleted_ike):
            later = self._half_open.pop(ike_sa_id, None)
            if later is not None:
                later.cancel()
            self._riding.pop(ike_sa_id, None)
        if step.half_open and self._loop is not None:
            # written a moment later, unless its IKE_AUTH (which writes it whole) comes first
            handle = self._loop.call_later(HALF_OPEN_WRITE_DELAY_S, self._write_half_open, step)
            for ike_sa_id in step.created:
                self._half_open[ike_sa_id] = handle
        elif step.needs_write:
            self._submit(step)
        self._removals_later()

    async def _radius(self, request: RadiusRequested) -> None:
        """One EAP response relayed: the datagram to its server, the answer (or the timeout)
        to the engine, whose step is then handled as any other."""
        task = asyncio.current_task()
        try:
            server = self._radius_servers[request.server]

            def accept(reply: bytes) -> bool:
                return self._radius_answered(request.ike_sa_id, reply)

            if not await radius_exchange(request.datagram, server, request.identifier,
                                         self._radius_timing, accept):
                self.metrics.dropped.labels("radius_timeout").inc()
                self._radius_answered(request.ike_sa_id, None)
        except Exception as exc:  # the edge: a bug must cost one conversation, not keyd
            log.error("RADIUS round failed", extra={"ike_sa": request.ike_sa_id,
                                                    "error": f"{type(exc).__name__}: {exc}"})
        finally:
            if task is not None:
                self._radius_tasks.discard(task)

    def _radius_answered(self, ike_sa_id: str, reply: bytes | None) -> bool:
        step = self.engine.radius_answer(ike_sa_id, reply)
        if step is None:
            return False
        self._after_step(step)
        return True

    def _write_half_open(self, step: Step) -> None:
        """The half-open IKE SA's IKE_AUTH has not come: write it with the next write keyd
        makes anyway, or on its own by HALF_OPEN_RIDE_MAX_S."""
        self.engine.complete(step)
        for ike_sa_id in step.created:
            self._half_open.pop(ike_sa_id, None)
            self._riding[ike_sa_id] = step
        if self._commit_scheduled:
            return
        if self._riding_timer is None and self._loop is not None:
            self._riding_timer = self._loop.call_later(HALF_OPEN_RIDE_MAX_S,
                                                       self._write_riding)

    def _write_riding(self) -> None:
        self._riding_timer = None
        if self._riding:
            self._schedule_commit()

    def _take_riding(self) -> None:
        """Half-open IKE SAs waiting for a write join the one being made."""
        if not self._riding:
            return
        steps = {id(s): s for s in self._riding.values()}
        self._riding.clear()
        for step in steps.values():
            if any(self.engine.core.has_ike_sa(i) for i in step.created):
                self._queue(step)

    def _queue(self, step: Step) -> None:
        """The step waits for the next write; messages for its IKE SAs wait for the step."""
        for ike_sa_id in step.holds():
            held = self._held.get(ike_sa_id)
            if held is None:
                held = self._held[ike_sa_id] = _Held()
            held.steps += 1
        self._pending.append(step)

    def _submit(self, step: Step) -> None:
        self._queue(step)
        self._schedule_commit()

    def _schedule_commit(self) -> None:
        if not self._commit_scheduled and self._loop is not None:
            self._commit_scheduled = True
            self._loop.call_soon(self._commit, self._arrivals)

    def _commit(self, seen: int) -> None:
        """Group commit, on the loop's thread (no hand-over to another thread and back):
        while datagrams keep arriving, let the loop read them (each may add a step), then
        write every waiting step at once and release their replies."""
        assert self._loop is not None
        if self._arrivals != seen and len(self._pending) < COMMIT_BATCH_MAX:
            self._loop.call_soon(self._commit, self._arrivals)
            return
        self._commit_scheduled = False
        self._take_riding()
        batch, self._pending = self._pending[:COMMIT_BATCH_MAX], self._pending[COMMIT_BATCH_MAX:]
        if not batch:
            return
        persister = self.engine.persister
        self.metrics.commit_steps.observe(len(batch))
        try:
            results = persister.write_batch([s.changes for s in batch])
        except Exception as exc:   # not etcd's: the steps are not durable either
            log.error("write failed", extra={"error": f"{type(exc).__name__}: {exc}"})
            results = [StoreError(str(exc))] * len(batch)
        for step, error in zip(batch, results, strict=True):
            try:
                self._send(self.engine.settle(step, error))
            except Exception as exc:
                log.error("step not settled", extra={"error": f"{type(exc).__name__}: {exc}"})
            self._release(step)
        if self._pending:
            self._schedule_commit()
        self._removals_later()

    def _removals_later(self) -> None:
        """Removals (and owners of removed IKE SAs) wait for the next write; make sure one
        comes."""
        if self._removals_timer is None and self._loop is not None and \
                self.engine.persister.removals_due:
            self._removals_timer = self._loop.call_later(RIDE_WAIT_S, self._flush_removals)

    def _flush_removals(self) -> None:
        """Removals waited for a write that did not come: write them on their own."""
        self._removals_timer = None
        persister = self.engine.persister
        if self._commit_scheduled or not persister.removals_due:
            return   # the next write takes them along
        if not self.engine.etcd_ok:
            return   # the etcd probe writes them when etcd answers again
        try:
            persister.flush_removals()
        except StoreError:
            return   # kept for the etcd probe
        except Exception as exc:
            log.error("removal failed", extra={"error": f"{type(exc).__name__}: {exc}"})
            return
        self._removals_later()   # their owners, in a later revision

    def _release(self, step: Step) -> None:
        """The step is settled: messages that waited for its IKE SAs go on, in order."""
        for ike_sa_id in step.holds():
            held = self._held.get(ike_sa_id)
            if held is None:
                continue
            held.steps -= 1
            if held.steps > 0:
                continue
            del self._held[ike_sa_id]
            for inbound in held.waiting:
                self._enqueue(inbound, attempt=len(HALF_OPEN_RETRY_S))

    @property
    def _quiet(self) -> bool:
        """No step in flight: the timers and the flush may touch any IKE SA."""
        return not self._held and not self._pending

    def _dropped(self, reason: str) -> None:
        self.metrics.dropped.labels(reason).inc()

    def _sent(self, port: int) -> None:
        self.metrics.child(self.metrics.datagrams_out, str(port)).inc()

    def _send(self, out: list[Outbound]) -> None:
        for o in out:
            self.endpoints.send(o.data, o.local_port, o.remote)

    async def _timers(self) -> None:
        while True:
            deadline = self.engine.next_timer()
            delay = 1.0 if deadline is None else min(max(deadline - time.time(), 0.0), 1.0)
            await asyncio.sleep(delay)
            while not self._quiet:
                await asyncio.sleep(0.01)
            self._ike_watch_check()   # e.g. pool/ read in full meanwhile: stop following it
            try:
                out = self.engine.tick()
            except Exception as exc:
                log.error("timer step failed", extra={"error": f"{type(exc).__name__}: {exc}"})
                continue
            self._send(out)
            self._removals_later()

    # -- etcd ------------------------------------------------------------------------------
    # Another instance may continue an IKE SA this one holds; then this one's copy is stale.
    # keyd watches ike/ for that — but only while other instances are registered (the watch
    # costs every instance a decode per IKE SA write). It always runs until its first full
    # read is done: that read fills the identity index INITIAL_CONTACT needs; on its own,
    # an instance keeps the index up to date from its own events.
    def _start_ike_watch(self) -> None:
        self._ike_synced = False
        self._watcher = self.store.watch(IkeSaRecord, self._on_watch)

    def _on_watch(self, event: WatchEvent) -> None:
        # watcher thread → the loop, in order with the engine's own steps
        if isinstance(event, RecordPut) and isinstance(event.record, IkeSaRecord):
            self._call_in_loop(functools.partial(self.engine.seen_ike_sa, event.record,
                                                 event.revision))
        elif isinstance(event, RecordDeleted):
            self._call_in_loop(functools.partial(self.engine.seen_ike_sa_deleted, event.name))
        elif isinstance(event, WatchResynced):
            self._ike_synced = True
            self._call_in_loop(self._ike_watch_check)

    def _on_keyd(self, event: WatchEvent) -> None:
        if isinstance(event, RecordPut) and event.name != self.config.keyd.id:
            self._peers.add(event.name)
        elif isinstance(event, RecordDeleted):
            self._peers.discard(event.name)
        elif isinstance(event, WatchResynced):
            self._peers_synced = True
        self._call_in_loop(self._ike_watch_check)

    def _call_in_loop(self, fn: Any) -> None:
        def guarded() -> None:
            try:
                fn()
            except Exception as exc:
                log.error("watch event not handled", extra={
                    "error": f"{type(exc).__name__}: {exc}"})

        if self._loop is not None and not self._stopping.is_set():
            with contextlib.suppress(RuntimeError):   # loop closed: shutting down
                self._loop.call_soon_threadsafe(guarded)

    def _ike_watch_check(self) -> None:
        alone = self._peers_synced and not self._peers
        detached = self.view.follow_pool(not alone)
        if detached is not None:
            self._tasks.append(asyncio.create_task(asyncio.to_thread(detached.stop)))
        need = bool(self._peers) or not self._peers_synced or not self._ike_synced
        if need and self._watcher is None:
            log.info("other keyd instances registered: following ike/",
                     extra={"peers": ",".join(sorted(self._peers))})
            self._start_ike_watch()
        elif not need and self._watcher is not None:
            old, self._watcher = self._watcher, None
            self._tasks.append(asyncio.create_task(asyncio.to_thread(old.stop)))

    async def _register(self) -> None:
        """Hold keyd/<id> on a lease; after a loss (etcd away for a TTL), register again."""
        backoff = 0.5
        loop = asyncio.get_running_loop()

        def lost(_event: LeaseLost) -> None:
            loop.call_soon_threadsafe(self._lease_lost.set)

        while True:
            record = KeydRecord(id=self.config.keyd.id, address=self.config.address,
                                version=VERSION, started_at=time.time())
            self._lease_lost.clear()
            membership = Membership(self.store, record, LEASE_TTL_S, lost)
            try:
                await asyncio.to_thread(membership.start)
            except StoreError as exc:
                if backoff == 0.5:   # once per outage, not per retry
                    log.warning("cannot register in etcd yet; retrying",
                                extra={"error": str(exc)})
                await asyncio.to_thread(membership.stop, False)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.5
            self._membership = membership
            log.info("registered", extra={"key": membership.key, "lease": membership.lease_id})
            if not self._ready_said:   # systemd Type=notify: the lease exists, we serve
                ike_port, _ = self.endpoints.ports
                systemd.notify_ready(f"serving IKE on {self.config.keyd.vip}:{ike_port}")
                self._ready_said = True
            await self._lease_lost.wait()
            self._membership = None
            await asyncio.to_thread(membership.stop, False)
            log.warning("registration lost; registering again when etcd answers")

    async def _etcd_probe(self) -> None:
        """While etcd is away, look for it every second on a fresh connection; when it
        answers, move every user of the store onto that connection (the old one may sit in
        gRPC's reconnect backoff for many seconds more) and write what waited."""
        while True:
            await asyncio.sleep(1.0)
            if self.engine.etcd_ok and not self.engine.needs_flush:
                continue
            fresh = self.store.clone()
            try:
                await asyncio.to_thread(fresh.check)
            except StoreError:
                with contextlib.suppress(StoreError):
                    fresh.close()
                continue
            old = self.store
            self.store = fresh
            for pool in self.pools.values():
                pool.store = fresh
            try:
                self.engine.use_store(fresh)
                self.engine.flush(busy=set(self._held))
            except StoreError:
                continue
            finally:
                with contextlib.suppress(StoreError):
                    old.close()
            await self._restart_watch()

    async def _restart_watch(self) -> None:
        for attr in ("_watcher", "_keyd_watcher"):
            old = getattr(self, attr)
            if old is not None:
                await asyncio.to_thread(old.stop)
        self._peers_synced = False
        self._start_ike_watch()
        self._keyd_watcher = self.store.watch(KeydRecord, self._on_keyd)
        await asyncio.to_thread(self.view.start, self.store)

    async def _sweeper(self) -> None:
        interval = self.config.keyd.sweep_interval_s
        if interval <= 0:
            return
        # an IKE SA untouched for a lifetime and a half is gone for good
        max_age = self.config.keyd.ike_lifetime_s * 1.5
        while True:
            await asyncio.sleep(interval)
            try:
                # the reading and removing in a thread (it lists every IKE SA); what the
                # engine holds is updated on the loop
                gone = await asyncio.to_thread(self.engine.persister.sweep_expired, max_age)
                self.engine.swept(gone)
            except StoreError:
                continue
            if gone:
                log.info("expired IKE SAs removed", extra={"count": len(gone)})


# -- command line ------------------------------------------------------------------------------

_FLAGS = {
    "id": "keyd.id", "vip": "keyd.vip", "identity": "keyd.identity",
    "psk_file": "keyd.psk_file", "secrets_file": "keyd.secrets_file",
    "cert_file": "keyd.cert_file", "key_file": "keyd.key_file",
    "ca_file": "keyd.ca_file", "pool": "keyd.pool", "ike_port": "keyd.ike_port",
    "natt_port": "keyd.natt_port", "ike_proposal": "keyd.ike_proposals",
    "esp_proposal": "keyd.esp_proposals", "protected_network": "keyd.protected_networks",
    "dns": "keyd.dns", "endpoints": "etcd.endpoints", "cacert": "etcd.cacert",
    "cert": "etcd.cert", "key": "etcd.key", "cluster": "cluster.name",
    "data_key_file": "cluster.data_key_file", "log_level": "log.level",
    "log_json": "log.json", "metrics_listen": "metrics.listen",
}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help=f"TOML configuration (default {DEFAULT_PATH} if it exists)")
@click.option("--id", help="this instance's id (keyd/<id>)")
@click.option("--vip", help="the cluster's virtual IP (local address for IKE)")
@click.option("--identity", help="the gateway's IKE identity (IDr)")
@click.option("--psk-file", help="pre-shared key file (mode 0600)")
@click.option("--secrets-file", help="PSKs and EAP users by identity (TOML, mode 0600; "
              "read again on SIGHUP)")
@click.option("--cert-file", help="gateway certificate (PEM)")
@click.option("--key-file", help="gateway private key (PEM, mode 0600)")
@click.option("--ca-file", help="CA that signs client certificates (PEM)")
@click.option("--pool", help="client virtual IP pool (CIDR)")
@click.option("--ike-port", type=int)
@click.option("--natt-port", type=int)
@click.option("--ike-proposal", multiple=True, help="IKE proposal (repeatable)")
@click.option("--esp-proposal", multiple=True, help="ESP proposal (repeatable)")
@click.option("--protected-network", multiple=True, help="protected network CIDR (repeatable)")
@click.option("--dns", multiple=True, help="DNS server for clients (repeatable)")
@click.option("--endpoints", help="etcd endpoints, comma separated")
@click.option("--cacert", help="etcd CA certificate")
@click.option("--cert", help="etcd client certificate")
@click.option("--key", help="etcd client key")
@click.option("--cluster", help="cluster name")
@click.option("--data-key-file", help="cluster data key file (mode 0600)")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--log-json/--no-log-json", default=None)
@click.option("--metrics-listen", help='Prometheus host:port ("" disables)')
def cli(config_path: str | None, **flags: Any) -> None:
    """keyd: the IKEv2 responder that negotiates for the cluster's virtual IP."""
    if flags.get("endpoints"):
        flags["endpoints"] = tuple(e.strip() for e in flags["endpoints"].split(",") if e.strip())
    overrides = {_FLAGS[name]: value for name, value in flags.items()}
    path = config_path
    if path is None and DEFAULT_PATH.exists():
        path = str(DEFAULT_PATH)
    try:
        config = load_config(path, overrides)
        setup_logging(config.log.level, config.log.json)
        data_key = load_data_key(config.cluster.data_key_file)
        server = KeydServer(config, data_key)
    except (ConfigError, DataKeyError) as exc:
        click.echo(f"keyd: {exc}", err=True)
        sys.exit(2)
    except StoreError as exc:
        click.echo(f"keyd: {exc}", err=True)
        sys.exit(1)
    # A wrong key would skip every stored SA and seal new ones under a key nobody has.
    wrong = server.store.wrong_data_key(data_key)
    if wrong is not None:
        server.store.close()
        click.echo(f"keyd: {wrong}", err=True)
        sys.exit(2)
    try:
        asyncio.run(server.run_until_signalled())
    except OSError as exc:
        click.echo(f"keyd: {exc.strerror or exc}", err=True)
        sys.exit(1)


def main() -> None:
    try:
        cli.main(standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)
