"""Loading a model for the playground: a checkpoint directory or a Hub repo id, converted to its serving
precision, with its engine and batcher, all on the server's compute thread. What the operator chose at start-up
is a `ServeConfig` (app.py fills it from flags and the environment; nothing here reads them); which model is
served is decided in tinygpt.playground.registry."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tinygpt.data.copy_index import CopyIndex, find_copy_index
from tinygpt.data.tokenizer import Tokenizer
from tinygpt.device import pick_device
from tinygpt.inference.engine import Engine
from tinygpt.kernels.quantize import for_serving, servable_precision
from tinygpt.model.checkpoint import SHIPPED_MODEL, find_loss_curve
from tinygpt.model.gpt import GPT
from tinygpt.serving.batching import Batcher
from tinygpt.serving.compute_thread import ComputeThread
from tinygpt.serving.reload import Reloader
from tinygpt.serving.warmup import WARMING, WarmUp, fast_path
from tinygpt.sharing.hub import from_pretrained

log = logging.getLogger(__name__)
DEFAULT_CHECKPOINT = "out/best"

HOW_TO_GET_A_MODEL = """\
**No model is loaded yet.** To get one:

1. Train one: `python prepare_data.py` then `python train.py --preset cpu --time-budget 60m` (an hour on a
   laptop CPU for readable stories; `--time-budget 10m` for a first taste); then restart the app, which serves
   `out/best` when it is there.
2. Or point the app at a checkpoint: `python app.py --checkpoint path/to/checkpoint` (or `USER/NAME` on the
   Hugging Face Hub), or set `TINYGPT_CHECKPOINT` / `TINYGPT_HUB_REPO` (on a Space: Settings → Variables).
"""


@dataclass(frozen=True)
class ServeConfig:
    """What the operator chose at start-up (app.py fills it from flags and the environment)."""

    checkpoint: str | None = None  # --checkpoint / TINYGPT_CHECKPOINT: a directory or a Hub repo id
    hub_repo: str | None = None  # TINYGPT_HUB_REPO: tried after out/best
    precision: str | None = None  # None: the device's best for the model (tinygpt.kernels.quantize.default_precision)
    compile: bool = True  # torch.compile the decode step (falls back to eager if compiling fails)
    concurrency: int = 32  # stories decoded together, in one batch per step
    max_queue: int = 64  # requests waiting beyond those (per model); more are refused with a message
    compare: tuple[str, ...] = ()  # --compare: more models (paths or repo ids) visitors may pick side by side


@dataclass
class LoadedModel:
    batcher: Batcher  # what the page's requests go through: every stream shares the engine's steps
    info: dict  # config.json of the checkpoint
    tokenizer: Tokenizer
    source: str  # where it came from, for the page
    directory: Path
    precision: str = "fp32"
    num_params: int = 0
    warmup: WarmUp | None = None  # preparing the fast path in the background, when the server asked for it
    reloader: Reloader | None = None  # serving each new checkpoint written to `directory` (out/best), if followed
    _copies: tuple | None = field(default=None, repr=False)  # (checkpoint key, its copy index)

    @property
    def engine(self) -> Engine:
        return self.batcher.engine  # a warm-up may replace it with a copy on our kernels

    @property
    def model(self) -> GPT:
        return self.engine.model

    @property
    def warming(self) -> bool:
        """Still decoding eagerly while the fast path is prepared."""
        return self.warmup is not None and self.warmup.state == WARMING

    def copy_index(self) -> CopyIndex:
        """The copy index of its training text (its folder's or its run's); CopyIndexError says why none.
        Loaded once per checkpoint served (about 3 MB); looked for again while there is none."""
        fingerprint = self.info.get("metadata", {}).get("data_fingerprint", "")
        key = (self.directory, fingerprint, self.info.get("metadata", {}).get("step"))
        if self._copies is None or self._copies[0] != key:
            self._copies = (key, find_copy_index(self.directory, fingerprint))
        return self._copies[1]

    @property
    def loss_png(self) -> Path | None:
        return find_loss_curve(self.directory)

    @property
    def shipped(self) -> bool:
        """The model that comes with the repo (not one the user trained or chose)."""
        return self.directory.resolve() == SHIPPED_MODEL


def batch_sizes(concurrency: int) -> tuple[int, ...]:
    """The batch sizes a step is compiled for: powers of two up to `concurrency` (a batch is padded to the
    next, so at most half of a step is padding), and `concurrency` itself."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    return tuple(sorted({2**i for i in range(concurrency.bit_length()) if 2**i <= concurrency} | {concurrency}))


def load_for_serving(source: str, device: torch.device | None = None, precision: str | None = None,
                     compile: bool = False, concurrency: int = 32, max_queue: int = 64,
                     compute: ComputeThread | None = None, warm_up: threading.Lock | None = None,
                     follow: bool = False) -> LoadedModel:
    """Load a local checkpoint directory or a Hub repo id for inference on `device`, converted to
    `precision` (default: the device's fastest), with the decode step compiled if `compile`, served by a
    Batcher decoding up to `concurrency` streams together with `max_queue` more waiting. All of it on `compute`
    (a server's one thread for torch work; a new one if not given), where the Batcher then decodes. With
    `warm_up` (a lock a server's models share), the model is served eagerly at once and compiled in the
    background (tinygpt.serving.warmup) instead of before this returns. With `follow`, a local checkpoint
    directory (not the shipped model) that is written anew is served anew (tinygpt.serving.reload)."""
    compute = compute or ComputeThread()
    loaded = compute.call(_load, source, device, precision, compile, concurrency, max_queue, compute, warm_up)
    if follow and Path(source).is_dir() and not loaded.shipped:
        loaded.reloader = Reloader(loaded.batcher, compute, loaded.directory, loaded.precision, loaded.info,
                                   busy=lambda: loaded.warming, on_change=lambda info: setattr(loaded, "info", info))
    return loaded


def _load(source: str, device: torch.device | None, precision: str | None, compile: bool, concurrency: int,
          max_queue: int, compute: ComputeThread, warm_up: threading.Lock | None) -> LoadedModel:
    device = device or pick_device()
    model, info = from_pretrained(source, device)
    precision, why = servable_precision(precision, device, model.config)
    if why:
        log.warning("%s", why)
    later = compile and warm_up is not None  # kernels and compiled step from the background helper
    served = for_serving(model, precision, build_kernels=not later)
    log.info("serving %s (%.1fM parameters) in %s", source, model.num_params() / 1e6, precision)
    engine = Engine(served, compile=compile and not later, batch_sizes=batch_sizes(concurrency))
    batcher, directory = Batcher(engine, concurrency, max_queue, compute), Path(info["directory"])
    warmup = None
    if later and engine.compiled:  # a copy on kernels built earlier takes the one-pass step: nothing to prepare
        log.info("fast path: decode step %s from the start", fast_path(engine))
    elif later:
        warmup = WarmUp(batcher, compute, directory, precision, warm_up)
    return LoadedModel(batcher, info, Tokenizer(), source, directory, precision, model.num_params(), warmup)
