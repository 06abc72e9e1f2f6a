"""A served checkpoint folder that training rewrites (train.py's out/best after each new best) served anew, without
a restart: a watcher notices the change within seconds, and the new weights are taken up by the fast path's rule
(tinygpt.serving.warmup): on the compute thread and only while no story is being written, so none is cut. Where
the old decode step was compiled, the new one is compiled again (from Inductor's caches: same shapes), one batch
size per quiet moment; stories meanwhile are written eagerly."""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable

from tinygpt.model.checkpoint import CONFIG, CheckpointError
from tinygpt.serving.batching import Batcher
from tinygpt.serving.compute_thread import ComputeThread
from tinygpt.serving.warmup import serving_engine

log = logging.getLogger(__name__)
WATCH_EVERY_S = 2.0


def stamp(directory: Path) -> tuple[int, int] | None:
    """What changes when a checkpoint is written anew: its config.json's inode and modification time (a new
    checkpoint is renamed into place whole, so both change together with the weights)."""
    try:
        st = (Path(directory) / CONFIG).stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


class Reloader:
    """Serves the newest checkpoint in `directory` through `batcher`. `info` is the served checkpoint's config.json
    (updated when new weights are taken up; `on_change(info)` is called then). `busy()` says when not to start
    (a fast path still being prepared replaces the engine itself)."""

    def __init__(self, batcher: Batcher, compute: ComputeThread, directory: Path, precision: str, info: dict,
                 busy: Callable[[], bool] = lambda: False, on_change: Callable[[dict], None] = lambda info: None,
                 interval: float = WATCH_EVERY_S) -> None:
        self.batcher, self.compute, self.directory, self.precision = batcher, compute, Path(directory), precision
        self.info, self.busy, self.on_change, self.interval = info, busy, on_change, interval
        self.stamp, self._engine, self._compile = stamp(directory), None, False
        self._stop, self._attached = threading.Event(), threading.Event()
        threading.Thread(target=self._watch, name="tinygpt-reload", daemon=True).start()

    @property
    def step(self) -> int | None:
        return self.info.get("metadata", {}).get("step")

    def close(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            now = stamp(self.directory)
            if now is None or now == self.stamp or self._attached.is_set() or self.busy():
                continue
            self.stamp = now
            self._attached.set()
            self.compute.attach(self._take_over)

    def _take_over(self) -> bool:
        """On the compute thread, between steps: one piece of the take-over while no story runs."""
        if sum(self.batcher.load()):
            return True  # stories are being written: the batcher's steps keep this loop turning until they end
        if self._engine is None:
            return self._replace()
        sizes = self._engine.uncompiled_sizes() if self._compile else ()
        if sizes and self._engine.compile_size(sizes[0]) and len(sizes) > 1:
            return True
        self._done()
        return False

    def _replace(self) -> bool:
        old = self.batcher.engine
        try:
            engine, info = serving_engine(self.directory, self.precision, old.device, old.batch_sizes,
                                          build_kernels=False)
        except (CheckpointError, OSError) as e:  # half-written or removed meanwhile: the next change retries
            log.warning("could not take up the new checkpoint in %s (%s); still serving step %s", self.directory,
                        e, self.step)
            self._done()
            return False
        self.batcher.replace_engine(engine)
        self._engine, self._compile, self.info = engine, bool(old.compiled), info
        self.on_change(info)
        log.info("now serving step %s of %s (a new checkpoint, taken up between stories)", self.step, self.directory)
        if not self._compile:
            self._done()
        return self._compile

    def _done(self) -> None:
        self._engine = None
        self.compute.detach(self._take_over)
        self._attached.clear()
