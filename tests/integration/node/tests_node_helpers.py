"""Small helpers of the node integration tests."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(pred: Callable[[], object], timeout_s: float, step_s: float = 0.05) -> bool:
    """Poll `pred` until it is truthy or `timeout_s` passed (generous timeouts only)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step_s)
    return bool(pred())
