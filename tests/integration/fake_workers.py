"""Stand-in worker processes for the supervisor's tests: each plays one way a real worker
can behave (serve until SIGTERM, die at start, hang before serving), in milliseconds instead
of a real worker's start, so that backoff and crash-loop arithmetic run with real processes,
real pipes and real signals."""

from __future__ import annotations

import signal
import sys
from multiprocessing.connection import Connection
from typing import Any


def run(behaviour: str, ready: Connection) -> None:
    if behaviour == "die":
        sys.exit(7)
    if behaviour == "serve":
        signal.signal(signal.SIGTERM, _exit_cleanly)  # drained: exit 0, as a real worker
        ready.send(0)
    while True:  # "hang" never says it serves
        signal.pause()


def _exit_cleanly(*_: Any) -> None:
    sys.exit(0)
