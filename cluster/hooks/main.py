"""`cluster-hooks --config FILE`: run hooks on cluster events (docs/operator-guide.md).

Flags override the file's [hooks], [cluster] and [etcd] values. Exit 0 on SIGTERM/SIGINT,
1 on an operational failure (bad config, unreadable revision file, a stopped watch), 2 on bad
usage.

Under systemd (`Type=notify`, cluster/systemd.py): READY=1 once the watch is primed — the
keyspace read at the saved revision (or now) and the watch following etcd from there;
WATCHDOG=1 from the main loop while the watch and save threads are alive (also while it waits
for etcd at start-up); STOPPING=1 when it shuts down.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from cluster.config import Config, ConfigError, load_config, parse_config
from cluster.hooks.runner import HookRunner, HooksSettings
from cluster.store.errors import StoreError
from cluster.store.public import open_store
from cluster.systemd import WatchdogTicker, notify_ready, notify_status, notify_stopping

log = logging.getLogger("cluster.hooks")

DEFAULT_CONFIG = "/etc/ipsec-cluster/cluster-hooks.toml"
ETCD_RETRY_MAX_S = 10.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cluster-hooks",
                                description="Run hooks and webhooks on cluster events.")
    p.add_argument("--config", help=f"TOML configuration [default: {DEFAULT_CONFIG} if present]")
    p.add_argument("--directory", help="hooks directory ([hooks] directory)")
    p.add_argument("--webhook", action="append", metavar="URL",
                   help="webhook URL; repeat for several ([hooks] webhooks)")
    p.add_argument("--timeout-s", type=float, help="per-attempt time-out ([hooks] timeout_s)")
    p.add_argument("--retries", type=int, help="retries after a failed attempt")
    p.add_argument("--backoff-s", type=float, help="first retry delay, doubling [1]")
    p.add_argument("--queue-size", type=int, help="events queued per target")
    p.add_argument("--state-file", help="where the delivered revisions are kept")
    p.add_argument("--endpoints", help="etcd endpoints, comma-separated ([etcd] endpoints)")
    p.add_argument("--cluster", help="cluster name ([cluster] name)")
    p.add_argument("--prefix", help="keyspace prefix ([cluster] prefix)")
    p.add_argument("--metrics", metavar="HOST:PORT", help='Prometheus listen address, "" off')
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    return p


def settings_from(cfg: Config, args: argparse.Namespace | None = None) -> HooksSettings:
    """The runner's settings from a loaded configuration, flags (`args`) first. ConfigError
    when they are out of range or name neither a directory nor a webhook."""
    if args is None:
        args = _parser().parse_args([])
    sec = cfg.section("hooks")
    directory = args.directory if args.directory is not None else sec.path("directory", None)
    settings = HooksSettings(
        directory=Path(directory) if directory else None,
        webhooks=args.webhook if args.webhook is not None else sec.str_list("webhooks", []),
        timeout_s=args.timeout_s if args.timeout_s is not None else sec.get(
            "timeout_s", float, 10.0),
        retries=args.retries if args.retries is not None else sec.get("retries", int, 3),
        backoff_s=args.backoff_s if args.backoff_s is not None else sec.get(
            "backoff_s", float, 1.0),
        queue_size=args.queue_size if args.queue_size is not None else sec.get(
            "queue_size", int, 1000),
        state_file=Path(args.state_file or sec.path(
            "state_file", "/var/lib/ipsec-cluster/hooks.revision") or ""),
    )
    if settings.timeout_s <= 0 or settings.retries < 0 or settings.queue_size < 1 \
            or settings.backoff_s < 0:
        raise ConfigError(f"{cfg.source}: [hooks] timeout_s > 0, retries >= 0, "
                          "queue_size >= 1, backoff_s >= 0")
    if settings.directory is None and not settings.webhooks:
        raise ConfigError(f"{cfg.source}: [hooks] needs a directory or webhooks")
    return settings


def _load(args: argparse.Namespace) -> Config:
    if args.config:
        return load_config(args.config)
    if Path(DEFAULT_CONFIG).exists():
        return load_config(DEFAULT_CONFIG)
    return parse_config("", "<defaults>")


def _metrics(listen: str) -> None:
    if not listen:
        return
    from prometheus_client import start_http_server
    host, _, port = listen.rpartition(":")
    try:
        start_http_server(int(port), addr=host or "127.0.0.1")
    except (OSError, ValueError) as exc:
        log.warning("metrics on %s not started: %s", listen, exc)


def main(argv: list[str] | None = None) -> None:
    try:
        _main(argv)
    except Exception as exc:  # the last line of defence: one line, never a traceback
        log.debug("fatal", exc_info=True)
        print(f"cluster-hooks: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)


def _main(argv: list[str] | None) -> None:
    args = _parser().parse_args(argv)
    try:
        cfg = _load(args)
        settings = settings_from(cfg, args)
    except ConfigError as exc:   # a bad configuration is a usage error, as for every daemon
        print(f"cluster-hooks: {exc}", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(level=(args.log_level or cfg.log.level).upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    endpoints = args.endpoints.split(",") if args.endpoints else cfg.etcd.endpoints
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    _metrics(args.metrics if args.metrics is not None else cfg.metrics.listen)
    try:
        store = open_store(endpoints, args.cluster or cfg.cluster.name,
                           args.prefix or cfg.cluster.prefix, cacert=cfg.etcd.cacert,
                           cert=cfg.etcd.cert, key=cfg.etcd.key, timeout_s=cfg.etcd.timeout_s)
    except (StoreError, ValueError) as exc:
        print(f"cluster-hooks: {exc}", file=sys.stderr)
        sys.exit(1)
    runner = HookRunner(store, settings)
    watchdog = WatchdogTicker()

    def wait(seconds: float) -> bool:
        """Sleep up to `seconds`, feeding the watchdog; True once asked to stop."""
        deadline = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            watchdog.tick(now)
            left = deadline - now
            if left <= 0:
                return stopping.is_set()
            if stopping.wait(min(left, _tick_s(watchdog))):
                return True

    backoff = 0.5
    while not stopping.is_set():
        try:
            runner.start()
            break
        except StoreError as exc:
            log.error("%s; retrying in %.1fs", exc, backoff)
            notify_status(f"waiting for etcd: {exc}")
            if wait(backoff):
                break
            backoff = min(backoff * 2, ETCD_RETRY_MAX_S)
        except ValueError as exc:  # unreadable revision file
            log.error("%s", exc)
            sys.exit(1)
    if stopping.is_set():
        notify_stopping()
        store.close()
        return
    saver = threading.Thread(target=runner.run, name="hooks-save", daemon=True)
    saver.start()
    # The watch is primed (read at the saved revision, or now) and following etcd.
    notify_ready(f"watching after revision {runner.committed}")
    failed = False
    while not wait(1.0):
        if not (runner.feed.running and saver.is_alive()):
            log.error("the %s thread stopped; exiting so the service is restarted",
                      "watch" if not runner.feed.running else "save")
            failed = True
            break
    log.info("stopping")
    notify_stopping()
    started = time.monotonic()
    runner.stop()
    store.close()
    log.info("stopped in %.1fs; delivered up to %s", time.monotonic() - started,
             runner.committed)
    if failed:
        sys.exit(1)


def _tick_s(watchdog: WatchdogTicker) -> float:
    """How long the main loop may sleep between two looks at the watchdog."""
    if watchdog.interval_s is None:
        return 1.0
    return max(0.01, min(1.0, watchdog.interval_s / 2))


if __name__ == "__main__":
    main()
