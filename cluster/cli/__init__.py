"""`clusterctl`, the operator CLI (`cluster.cli.main`).

Importing the commands takes a while on a busy machine; a Ctrl-C in that time would print
the traceback of whatever import it hit. So when this package is loaded by the `clusterctl`
console script, SIGINT ends the process quietly (exit 130) until `main()` takes over.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType

EXIT_INTERRUPTED = 130


def interrupted_while_starting(signum: int, frame: FrameType | None) -> None:
    """SIGINT before `main()` runs: one line, exit 130, nothing to clean up yet."""
    sys.stderr.write("interrupted\n")
    raise SystemExit(EXIT_INTERRUPTED)


def _quiet_start() -> None:
    if os.path.basename(sys.argv[0] if sys.argv else "") != "clusterctl":
        return
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, interrupted_while_starting)


_quiet_start()
