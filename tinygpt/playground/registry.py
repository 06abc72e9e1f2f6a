"""The models a running playground offers: the one it serves (found again on a page reload when it was not
chosen explicitly), the others the operator listed for side-by-side comparison, and why a model could not be
loaded, in words for the page. Visitors pick among these by label; they never name a path or a repo."""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable

from tinygpt.inference.compute_thread import ComputeThread
from tinygpt.playground.serving import (DEFAULT_CHECKPOINT, LoadedModel, ServeConfig, load_for_serving,
                                        resolve_source)
from tinygpt.sharing.checkpoint import CheckpointError
from tinygpt.sharing.ship import SHIPPED_MODEL

log = logging.getLogger(__name__)


def label_of(source: str) -> str:
    return "shipped model" if Path(source).resolve() == SHIPPED_MODEL else source


def problem_text(source: str, error: Exception) -> str:
    """Markdown for the page: which model, what is wrong with it, and what to do."""
    return (f"**The model at `{source}` could not be loaded:** {error}\n\n"
            "Fix or replace it (a checkpoint directory holds `config.json` and `model.safetensors`, as "
            "`train.py` writes them), then reload this page.")


class ModelRegistry:
    """Loads what `config` names; `refresh()` (on each page load) picks up a model that appeared at
    out/best since start-up, unless the operator chose one explicitly."""

    def __init__(self, config: ServeConfig, default_dir: str | Path = DEFAULT_CHECKPOINT,
                 loader: Callable[..., LoadedModel] = load_for_serving) -> None:
        self.config, self.default_dir, self.loader = config, Path(default_dir), loader
        self.models: dict[str, LoadedModel] = {}  # label -> model; the served one first
        self.problem: str | None = None  # markdown for the page
        self.problem_plain: str | None = None  # the same for a terminal
        self._lock = threading.Lock()
        self.compute = ComputeThread()  # every model's loading and decoding: one thread for torch's work
        self._load_served()
        for source in config.compare:
            self._add(source)

    @property
    def served(self) -> LoadedModel | None:
        return next(iter(self.models.values()), None)

    def labels(self) -> list[str]:
        return list(self.models)

    def _add(self, source: str, first: bool = False) -> LoadedModel | None:
        """Offer `source`, first when `first`. Loaded once per label: each load starts a batching thread and
        allocates its cache, so a model named twice (served and compared, say) is one model."""
        label = label_of(source)
        loaded = self.models.get(label)
        if loaded is None:
            try:
                c = self.config
                loaded = self.loader(source, precision=c.precision, compile=c.compile, concurrency=c.concurrency,
                                     max_queue=c.max_queue, compute=self.compute)
            except CheckpointError as e:
                log.error("%s", e)
                self.problem = problem_text(source, e)
                self.problem_plain = f"{source}: could not load the model: {e}"
                return None
            self.models = {**self.models, label: loaded}
        if first:
            self.models = {label: loaded, **self.models}  # a repeated key keeps its first place
        return loaded

    def _load_served(self) -> None:
        source = resolve_source(self.config, self.default_dir)
        if source is None or self._add(source, first=True) is not None:
            return
        fallback = str(SHIPPED_MODEL)  # a broken out/best or Hub repo: say so, and still serve something
        if not self.config.checkpoint and source != fallback and (SHIPPED_MODEL / "config.json").is_file():
            self._add(fallback, first=True)

    def refresh(self) -> bool:
        """Serve out/best if it appeared (or was fixed) since start-up; True when the served model changed."""
        if self.config.checkpoint or not (self.default_dir / "config.json").is_file():
            return False
        served = self.served
        if served is not None and Path(served.source).resolve() == self.default_dir.resolve():
            return False
        with self._lock:
            self.problem = None
            if self._add(str(self.default_dir), first=True) is None:
                return False
            log.info("serving %s, which appeared after start-up", self.default_dir)
            return True
