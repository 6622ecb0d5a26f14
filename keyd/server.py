"""The `keyd` daemon: asyncio glue around the IKE core, the etcd store and the UDP endpoints.

Bytes in from the sockets → `Engine.step` (the core) → group commit (`keyd/commit.py`) →
bytes out. Everything runs on the event loop's own thread: handing datagrams or writes to a
worker thread and back cost thread wake-ups per message, milliseconds on a busy machine.
While a write waits for etcd, datagrams wait in the socket buffers and go into the next
write together. Watch callbacks (their own threads) are handed to the loop, so the engine is
only ever entered from it.

Around that: registration in `keyd/<id>` on a lease (`keyd/registration.py`), a watch on
`ike/` so an IKE SA continued by another instance is dropped here, the core's timers, a
sweeper for what dead instances left behind (`keyd/sweeper.py`), an etcd probe while etcd
is away (`keyd/etcd_probe.py`), and the Prometheus endpoint. The command is `keyd/main.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from cluster import systemd
from cluster.store.client import Store
from cluster.store.errors import StoreError
from cluster.store.keyspace import Keyspace
from cluster.store.records import IkeSaRecord, KeydRecord
from cluster.store.seal import DataKey
from cluster.store.watch import RecordDeleted, RecordPut, WatchEvent, WatchResynced

from .commit import GroupCommit
from .config import ConfigError, KeydConfig, parse_listen
from .credentials import build_core, configured_secrets, radius_servers, responder_config
from .engine import Engine
from .etcd_probe import probe_etcd
from .ike.events import RadiusRequested
from .ike.responder import Responder
from .metrics import KeydMetrics
from .pool import AddressPool
from .radius import RadiusTiming, radius_exchange
from .redirects import Redirects
from .registration import Registration
from .step import Outbound, Step, ike_sa_id_of
from .sweeper import sweep
from .udp import Address, IkeEndpoints, Inbound
from .view import ClusterView

log = logging.getLogger("keyd")

#: an IKE_AUTH for an IKE SA held nowhere is tried again after these delays (the instance
#: that answered its IKE_SA_INIT writes the half-open state a moment later)
HALF_OPEN_RETRY_S = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


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
                                      self._dropped, self._sent, self._new_init)
        self._tasks: list[asyncio.Task[None]] = []
        self.registration = Registration(k.id, config.address, lambda: self.store,
                                         self._registered, self._lease_lost)
        self._watcher: Any = None          # ike/: only while other instances exist
        self._keyd_watcher: Any = None
        self._peers: set[str] = set()       # other keyd instances registered
        self._peers_synced = False
        self._ike_synced = False
        self._stopping = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._systemd_watchdog: asyncio.Task[None] | None = None
        self._ready_said = False
        # steps waiting for their write, and the messages that wait for them
        self.commit = GroupCommit(lambda: self.engine, self.metrics, self._send, self._resume)
        self._radius_servers = radius_servers(config)
        self._radius_timing = RadiusTiming(k.radius_timeout_s, k.radius_tries)
        self._radius_tasks: set[asyncio.Future[None]] = set()
        # clusterctl's redirect/ requests (RFC 5685 §5): keyd/redirects.py
        self.redirects = Redirects(k.id, self.store, lambda: self.engine, lambda: self._peers,
                                   lambda: self.commit.quiet, self._send, self._call_in_loop)

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = self.commit.loop = asyncio.get_running_loop()
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
        self.redirects.start()
        self._systemd_watchdog = systemd.start_watchdog()
        self._tasks = [
            asyncio.create_task(self._supervised("_timers", self._timers), name="keyd-timers"),
            asyncio.create_task(self._supervised("_register", self.registration.run),
                                name="keyd-register"),
            asyncio.create_task(self._supervised("_etcd_probe", self._etcd_probe),
                                name="keyd-etcd-probe"),
            asyncio.create_task(self._supervised("_sweeper", self._sweeper),
                                name="keyd-sweeper"),
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
        self.commit.stop()
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
        self.redirects.cancel()
        await asyncio.to_thread(self.redirects.stop)
        await self.registration.stop()
        with contextlib.suppress(StoreError):
            self.store.close()

    async def _supervised(self, task: str, body: Callable[[], Awaitable[None]]) -> None:
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
                    "task": task, "error": f"{type(exc).__name__}: {exc}"})
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
            fresh = configured_secrets(self.config)
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
    # A step runs the core at once; what it must write goes to the committer (group commit),
    # which holds further messages for the IKE SAs the step changed until it is settled.
    def _enqueue(self, inbound: Inbound, attempt: int = 0) -> None:
        if not attempt:
            self.commit.arrivals += 1
            self.metrics.child(self.metrics.datagrams_in, str(inbound.dst[1])).inc()
        header = ike_sa_id_of(inbound.data, inbound.ike_offset)
        if self.commit.hold(header[0], inbound):
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

    def _new_init(self, data: bytes, src: Address, dst: Address) -> bytes | None:
        """A new IKE_SA_INIT, before any step: a cookie or a refusal is answered from here
        (what a flood from spoofed sources is made of costs little); None: `_enqueue` it."""
        try:
            answer = self._engine.answer_statelessly(data, src, dst) \
                if self._engine is not None else None
        except Exception as exc:  # the edge: a bug must cost one message, not the daemon
            log.error("message not handled", extra={"error": f"{type(exc).__name__}: {exc}",
                                                    "peer": f"{src[0]}"})
            self.metrics.dropped.labels("internal_error").inc()
            return None
        if answer is not None:   # (not an arrival a group commit waits for: no step)
            self.metrics.child(self.metrics.datagrams_in, str(dst[1])).inc()
        return answer

    def _resume(self, inbound: Inbound) -> None:
        """A message that waited for a step of its IKE SA goes on (no more retries)."""
        self._enqueue(inbound, attempt=len(HALF_OPEN_RETRY_S))

    def _after_step(self, step: Step) -> None:
        """Send what may leave now, hand the writes to the committer, start RADIUS rounds."""
        for request in step.radius:
            self._radius_tasks.add(asyncio.ensure_future(self._radius(request)))
        self._send(step.release_now())
        self.commit.take(step)

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

    def _dropped(self, reason: str, count: int = 1) -> None:
        self.metrics.child(self.metrics.dropped, reason).inc(count)

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
            while not self.commit.quiet:
                await asyncio.sleep(0.01)
            self._ike_watch_check()   # e.g. pool/ read in full meanwhile: stop following it
            try:
                out = self.engine.tick()
            except Exception as exc:
                log.error("timer step failed", extra={"error": f"{type(exc).__name__}: {exc}"})
                continue
            self._send(out)
            self.commit.removals_later()

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
        self._call_in_loop(self.redirects.peers_changed)

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

    def _registered(self) -> None:
        if not self._ready_said:   # systemd Type=notify: the lease exists, we serve
            ike_port, _ = self.endpoints.ports
            systemd.notify_ready(f"serving IKE on {self.config.keyd.vip}:{ike_port}")
            self._ready_said = True

    def _lease_lost(self, silent_s: float) -> None:
        """keyd/<id>'s lease is lost: etcd has been silent that long, so keyd knows of the
        outage even when no write has failed yet (the probe starts, new clients are
        refused)."""
        if self._engine is not None:
            self.engine.etcd_silent(silent_s)

    async def _etcd_probe(self) -> None:
        await probe_etcd(lambda: not self.engine.etcd_ok or self.engine.needs_flush,
                         lambda: self.store, self._use_store, self._restart_watch)

    def _use_store(self, fresh: Store) -> None:
        """etcd answers on `fresh`: every user of the store moves onto it, and what waited
        is written (StoreError: not yet)."""
        self.store = fresh
        for pool in self.pools.values():
            pool.store = fresh
        self.engine.use_store(fresh)
        self.engine.flush(busy=self.commit.busy())

    async def _restart_watch(self) -> None:
        for attr in ("_watcher", "_keyd_watcher"):
            old = getattr(self, attr)
            if old is not None:
                await asyncio.to_thread(old.stop)
        self._peers_synced = False
        self._start_ike_watch()
        self._keyd_watcher = self.store.watch(KeydRecord, self._on_keyd)
        await asyncio.to_thread(self.view.start, self.store)
        await asyncio.to_thread(self.redirects.restart, self.store)

    async def _sweeper(self) -> None:
        await sweep(self.engine, self.config.keyd.sweep_interval_s,
                    self.config.keyd.ike_lifetime_s)
