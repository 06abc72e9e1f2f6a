"""Stopping a run cleanly: Ctrl-C or SIGTERM asks the run to stop at the next micro-batch (it then saves last/);
asked twice, it stops at once."""
from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

log = logging.getLogger(__name__)


class StopRequest:
    """While entered (on the main thread: signals can only be caught there), SIGINT and SIGTERM set `requested`
    instead of killing the process; a second signal raises KeyboardInterrupt."""

    def __init__(self) -> None:
        self.requested = False
        self._handlers: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._handlers = {s: signal.signal(s, self._ask) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._handlers.items():
            signal.signal(s, handler)
        self._handlers = {}

    def _ask(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:  # asked twice: stop now
            raise KeyboardInterrupt
        log.warning("signal %d: finishing this step, saving last/ and stopping", signum)
        self.requested = True
