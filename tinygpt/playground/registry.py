"""The models a running playground offers, and the one place that decides which it serves: the operator's
--checkpoint (or TINYGPT_CHECKPOINT) alone, else the first that loads of out/best, TINYGPT_HUB_REPO and the model
that ships with the package. Also the models listed for side-by-side comparison, and why one could not be
loaded, in words for the page. Visitors pick among these by label; they never name a path or a repo."""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable

from tinygpt.model.checkpoint import SHIPPED_MODEL, CheckpointError
from tinygpt.serving.compute_thread import ComputeThread
from tinygpt.serving.loading import DEFAULT_CHECKPOINT, LoadedModel, ServeConfig, load_for_serving

log = logging.getLogger(__name__)


def candidates(config: ServeConfig, default_dir: str | Path = DEFAULT_CHECKPOINT) -> tuple[str, ...]:
    """The models to try serving, in order (paths or repo ids): the first that loads is served. A model the
    operator named explicitly is the only candidate: if it is broken, the app says so instead of serving another."""
    if config.checkpoint:
        return (config.checkpoint,)
    found = [str(default_dir)] if (Path(default_dir) / "config.json").is_file() else []
    found += [config.hub_repo] if config.hub_repo else []
    found += [str(SHIPPED_MODEL)] if (SHIPPED_MODEL / "config.json").is_file() else []
    return tuple(found)


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
        self.warm_up = threading.Lock()  # each model's fast path is prepared in the background, one at a time
        for source in candidates(config, self.default_dir):
            if self._add(source, first=True) is not None:
                break
        for source in config.compare:
            self._add(source)

    @property
    def served(self) -> LoadedModel | None:
        return next(iter(self.models.values()), None)

    def labels(self) -> list[str]:
        return list(self.models)

    def warming(self) -> list[str]:
        """The models still decoding eagerly while their fast path is prepared."""
        return [label for label, loaded in self.models.items() if loaded.warming]

    def _add(self, source: str, first: bool = False) -> LoadedModel | None:
        """Offer `source`, first when `first`. Loaded once per label: each load starts a batching thread and
        allocates its cache, so a model named twice (served and compared, say) is one model. A model that cannot
        be loaded is logged and, if it is the first problem, described for the page."""
        label = label_of(source)
        loaded = self.models.get(label)
        if loaded is None:
            try:
                c = self.config
                loaded = self.loader(source, precision=c.precision, compile=c.compile, concurrency=c.concurrency,
                                     max_queue=c.max_queue, compute=self.compute, warm_up=self.warm_up,
                                     follow=first)
            except CheckpointError as e:
                log.error("%s", e)
                if self.problem is None:
                    self.problem = problem_text(source, e)
                    self.problem_plain = f"{source}: could not load the model: {e}"
                return None
            self.models = {**self.models, label: loaded}
        if first:
            self.models = {label: loaded, **self.models}  # a repeated key keeps its first place
        return loaded

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
