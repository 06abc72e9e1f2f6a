"""The one thread that runs a server's torch work: loading its models, compiling their decode steps, and every
Batcher's steps, in turn.

Why one: on a CPU each thread that runs parallel torch ops keeps its own OpenMP team, and once the teams hold
more threads than there are cores, OpenMP (libgomp) stops spinning between parallel regions, so each region of a
step waits for sleeping workers to wake: a step on a second thread runs several times slower than on the thread
that loaded the model. The price: a model loaded while stories run (out/best appearing after start-up) pauses
them until it is loaded and compiled, seconds, once.
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from concurrent.futures import Future
from typing import Callable, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


class ComputeThread:
    """Runs jobs (`call`) and loops (`attach`) on one thread. A loop is a function called again and again while
    it returns True (it has more to do); after it returns False, until `wake()`. Jobs run between its calls."""

    def __init__(self, name: str = "tinygpt-compute") -> None:
        self._cond = threading.Condition()
        self._jobs: deque[Callable[[], None]] = deque()
        self._loops: list[Callable[[], bool]] = []
        self._woken = self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def call(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        """fn(*args, **kwargs) on this thread: its result, or its exception raised here."""
        if threading.current_thread() is self._thread:
            return fn(*args, **kwargs)
        future: Future = Future()

        def job() -> None:
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                future.set_exception(e)

        with self._cond:
            if self._closed:
                raise RuntimeError("the compute thread is closed")
            self._jobs.append(job)
            self._cond.notify()
        return future.result()

    def attach(self, loop: Callable[[], bool]) -> None:
        """Call `loop` on this thread from now on (one that raises is logged and detached)."""
        with self._cond:
            self._loops = [*self._loops, loop]
            self._woken = True
            self._cond.notify()

    def detach(self, loop: Callable[[], bool]) -> None:
        with self._cond:  # ==, not `is`: each `obj.method` is a new bound-method object, equal to the last
            self._loops = [f for f in self._loops if f != loop]

    def wake(self) -> None:
        """A loop has work again."""
        with self._cond:
            self._woken = True
            self._cond.notify()

    def close(self) -> None:
        """Run the jobs already queued, then stop."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._jobs or self._woken or self._closed):
                    self._cond.wait()
                if self._closed and not self._jobs:
                    return
                jobs, self._jobs = self._jobs, deque()
                loops, self._woken = self._loops, False
            for job in jobs:
                job()
            busy = False
            for loop in loops:
                try:
                    busy = loop() or busy
                except Exception:  # noqa: BLE001 - one broken loop must not stop the others or the jobs
                    log.exception("a compute loop failed; detaching it")
                    self.detach(loop)
            if busy:
                with self._cond:
                    self._woken = True
