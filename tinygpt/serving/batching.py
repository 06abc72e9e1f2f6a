"""Continuous batching: many streams share each decode step of one Engine.

Decoding a token reads every weight once whether it is for one stream or sixty-four, so a step over a batch of
streams costs little more than a step for one. A ComputeThread runs the steps (one thread for all of a server's
torch work: see tinygpt.serving.compute_thread): between them, new requests join (their prompts prefilled
into free cache rows) and finished, stopped or abandoned ones leave (their rows freed at once). Each stream
keeps its own settings, seed and position, so a seeded request gives the same story alone or beside others: in
fp32, and in the CPU defaults int8 and int4 (whose compiled step rounds a row alike at every batch size; see
engine.compile_step and matmul.cpp), both measured by bench/batching.py.
Waiting is bounded: past `max_batch + max_waiting` requests, `submit` raises `QueueFull`.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from typing import AsyncIterator, Callable, Iterator

from tinygpt.inference.engine import Engine, SampledToken, Stream
from tinygpt.inference.sampling import SamplingParams
from tinygpt.serving.compute_thread import ComputeThread

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """Every generation slot is busy and the waiting line is full."""


class StoryFailed(RuntimeError):
    """A decode step failed: its stories end with this (a message for their readers); the batcher serves on."""


class Request:
    """One stream's tokens on their way from the batching thread to whoever reads them."""

    def __init__(self, stream: Stream, wake: Callable[[bool], None]) -> None:
        self.stream, self._wake = stream, wake  # wake(finished): called from the batching thread on news
        self._lock = threading.Lock()
        self._tokens: list[SampledToken] = []
        self.finished = False
        self.cancelled = False
        self.error: BaseException | None = None

    def put(self, token: SampledToken) -> None:
        with self._lock:
            self._tokens.append(token)
            self.finished = self.stream.done
        self._wake(self.finished)

    def fail(self, error: BaseException) -> None:
        with self._lock:
            self.error, self.finished = error, True
        self._wake(True)

    def take(self) -> tuple[list[SampledToken], bool]:
        """The tokens since the last take, and whether the stream has ended (raises its error if it failed)."""
        with self._lock:
            tokens, self._tokens = self._tokens, []
            if self.error is not None:
                raise self.error
            return tokens, self.finished

    def cancel(self) -> None:
        """Stop generating; the stream's cache row is freed before the next step."""
        self.cancelled = True


class Batcher:
    """Serves `engine`'s model to many concurrent streams. Up to `max_batch` (default: the engine's largest
    batch size) decode together; `max_waiting` more may queue. Use `generate` (blocking) or `chunks` (asyncio).
    The steps run on `compute` (the thread that loaded the engine, ideally), else on a thread of its own."""

    def __init__(self, engine: Engine, max_batch: int | None = None, max_waiting: int = 64,
                 compute: ComputeThread | None = None) -> None:
        self.engine = engine
        self.max_batch = max_batch or max(engine.batch_sizes)
        self.max_waiting = max_waiting
        self._own = compute is None  # a thread of its own, closed with it
        self.compute = compute or ComputeThread("tinygpt-batcher")
        self.cache = self.compute.call(engine.new_cache, engine.rows_needed(self.max_batch))
        self._waiting: deque[Request] = deque()
        self._active: list[Request] = []  # request i decodes in cache row i
        self._lock = threading.Lock()
        self._closed = False
        self._signals: dict[asyncio.AbstractEventLoop, list[Callable[[], None]]] = {}  # see _signal
        self._signals_lock = threading.Lock()
        self.compute.attach(self._tick)

    @property
    def block_size(self) -> int:
        return self.engine.block_size

    @property
    def eot_id(self) -> int:
        return self.engine.eot_id

    def replace_engine(self, engine: Engine) -> None:
        """Decode with `engine` (a faster copy of the same model) from the next step on. On the compute thread,
        between steps: streams already running are re-encoded into its cache, whose dtype may differ."""
        self.engine, self.cache = engine, engine.new_cache(engine.rows_needed(self.max_batch))
        with self._lock:
            for request in self._active:
                request.stream.stale = True

    def load(self) -> tuple[int, int]:
        """(streams decoding, requests waiting) right now."""
        with self._lock:
            return len(self._active), len(self._waiting)

    def submit(self, ids: list[int], params: SamplingParams, wake: Callable[[bool], None] = lambda finished: None
               ) -> Request:
        """Queue a stream; raises QueueFull when every slot is busy and the waiting line is full."""
        request = Request(self.engine.new_stream(ids, params), wake)
        with self._lock:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            if len(self._active) + len(self._waiting) >= self.max_batch + self.max_waiting:
                raise QueueFull(f"The playground is busy ({len(self._active)} stories being written, "
                                f"{len(self._waiting)} waiting). Please try again in a minute.")
            self._waiting.append(request)
        self.compute.wake()
        return request

    def generate(self, ids: list[int], params: SamplingParams) -> Iterator[SampledToken]:
        """Yield each new token, as Engine.generate does; closing the iterator cancels the stream."""
        ready = threading.Event()
        request = self.submit(ids, params, lambda finished: ready.set())
        try:
            while True:
                ready.wait()
                ready.clear()
                tokens, finished = request.take()
                yield from tokens
                if finished:
                    return
        finally:
            request.cancel()

    async def chunks(self, ids: list[int], params: SamplingParams, interval: float = 0.0, total_rate: float = 0.0
                     ) -> AsyncIterator[list[SampledToken]]:
        """Yield the new tokens in lists, at most one list per `interval` seconds (the first and the last at
        once) and, with `total_rate`, about that many lists a second over all streams: a busy server updates
        each page less often, leaving the CPU to the model. Cancelling or closing the iterator cancels the
        stream."""
        loop, ready, ended = asyncio.get_running_loop(), asyncio.Event(), asyncio.Event()
        idle = [False]  # the reader is waiting for tokens (not gathering them): only then is a token news

        def signal(finished: bool) -> None:
            ready.set()
            if finished:
                ended.set()

        def wake(finished: bool) -> None:  # in the batching thread; each signal wakes the server's thread
            if finished or idle[0]:
                self._signal(loop, lambda: signal(finished))

        request = self.submit(ids, params, wake)
        try:
            while True:
                idle[0] = True  # before take(): a token put after it is signalled
                tokens, finished = request.take()
                if not (tokens or finished):
                    await ready.wait()
                    ready.clear()
                    continue
                idle[0] = False
                if tokens:
                    yield tokens
                if finished:
                    return
                wait = max(interval, sum(self.load()) / total_rate if total_rate else 0.0)
                if wait:  # let tokens gather, but not past the stream's end
                    try:
                        await asyncio.wait_for(ended.wait(), wait)
                    except asyncio.TimeoutError:
                        pass
        finally:
            request.cancel()

    def _signal(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        """Run `callback` in `loop`'s thread. One step's signals to one loop go in one cross-thread call (each
        wakes the server's thread, which then competes with the model for the CPU)."""
        with self._signals_lock:
            pending = self._signals.setdefault(loop, [])
            pending.append(callback)
            first = len(pending) == 1
        if first:
            try:
                loop.call_soon_threadsafe(self._run_signals, loop)
            except RuntimeError:  # the loop is closed: nobody is reading
                with self._signals_lock:
                    self._signals.pop(loop, None)

    def _run_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._signals_lock:
            pending = self._signals.pop(loop, [])
        for callback in pending:
            callback()

    def close(self) -> None:
        """Stop decoding (between steps); streams still running end with an error."""
        with self._lock:
            self._closed = True
        self.compute.call(self._shut_down)
        if self._own:
            self.compute.close()

    def _shut_down(self) -> None:
        self.compute.detach(self._tick)
        with self._lock:
            ended, self._active, self._waiting = [*self._active, *self._waiting], [], deque()
        for request in ended:
            request.fail(RuntimeError("the playground is shutting down"))

    def _tick(self) -> bool:
        """Admit waiting requests into free rows and run one step (on the compute thread); whether there is
        more to do."""
        with self._lock:
            if self._closed:
                return False
            while self._waiting and len(self._active) < self.max_batch:
                request = self._waiting.popleft()
                if not request.cancelled:
                    self._active.append(request)  # its prompt is prefilled by the next step
        self._step()
        with self._lock:
            return bool(self._active or self._waiting)

    def _step(self) -> None:
        self._leave(lambda r: r.cancelled)
        if not self._active:
            return
        try:
            tokens = self.engine.advance(self.cache, [r.stream for r in self._active])
        except Exception as e:  # noqa: BLE001 - a failed step ends its streams with the error, not the server
            log.exception("decode step failed over %d stories; they end with an error, the server goes on",
                          len(self._active))
            message = f"The model failed while writing this story ({type(e).__name__}); please press Generate again."
            with self._lock:
                ended, self._active = self._active, []
            for row, request in enumerate(ended):
                self.cache.free_row(row)
                request.fail(StoryFailed(message))
            return
        for request, token in zip(self._active, tokens):
            request.put(token)
        self._leave(lambda r: r.stream.done)

    def _leave(self, gone: Callable[[Request], bool]) -> None:
        """Drop the requests `gone` says; the last active stream moves into each freed row, so rows stay packed."""
        with self._lock:
            for i in reversed(range(len(self._active))):
                if gone(self._active[i]):
                    last = len(self._active) - 1
                    if i != last:
                        self.cache.move_row(last, i)
                        self._active[i] = self._active[last]
                    else:
                        self.cache.free_row(i)
                    self._active.pop()

