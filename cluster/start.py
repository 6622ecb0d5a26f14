"""Start-up helpers the console scripts share.

Importing a command's modules takes a while on a busy machine; a Ctrl-C in that time would
print the traceback of whatever import it hit. `quiet_interrupt_while_starting(script)` makes
SIGINT end the process quietly (one line, exit 130) when, and only when, the process is that
console script — until its `main()` installs handlers of its own. The packages call it first
thing (`cluster.cli` for `clusterctl`, `cluster.hooks` for `cluster-hooks`, `sprayer`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from types import FrameType

EXIT_INTERRUPTED = 130


def say_from_handler(line: str) -> None:
    """One line to stderr from a signal handler: straight to file descriptor 2, since the
    handler may run while the main thread is inside a write to sys.stderr, and writing
    through that buffered stream again fails with "reentrant call"."""
    with contextlib.suppress(OSError):
        os.write(2, f"{line}\n".encode())


def interrupted_while_starting(signum: int, frame: FrameType | None) -> None:
    """SIGINT before `main()` runs: one line, exit 130, nothing to clean up yet."""
    say_from_handler("interrupted")
    raise SystemExit(EXIT_INTERRUPTED)


def quiet_interrupt_while_starting(script: str) -> None:
    """In the console script `script` (by argv[0]), make SIGINT quiet until replaced."""
    if os.path.basename(sys.argv[0] if sys.argv else "") != script:
        return
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, interrupted_while_starting)

