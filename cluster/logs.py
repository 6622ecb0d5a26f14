"""Structured logs: one line per event, `message key=value ...` or one JSON object.

Shared by keyd, the node and the sprayer. Fields come from `extra={...}` of the logging call.
The daemons log ids (IKE SA id, SPI, identity, addresses), never key material: no record,
state dict or key is ever passed as a field.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [f"{ts}.{int(record.msecs):03d}Z", record.levelname.lower(), record.name,
                 record.getMessage()]
        for key, value in _fields(record).items():
            text = str(value)
            parts.append(f"{key}={json.dumps(text) if (' ' in text or not text) else text}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": record.created, "level": record.levelname.lower(), "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _fields(record).items():
            body[key] = value if isinstance(value, int | float | bool | None) else str(value)
        return json.dumps(body, separators=(",", ":"))


def setup_logging(level: str, as_json: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if as_json else KeyValueFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # the lines show neither source file, thread nor process: do not look them up for every
    # record (the logging HOWTO, "Optimization")
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # etcd3/grpc chatter below warning is not operator news
    for noisy in ("etcd3", "grpc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
