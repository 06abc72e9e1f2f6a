"""Which model the playground serves, and loading it: --checkpoint (a directory or a Hub repo id),
TINYGPT_CHECKPOINT, out/best, TINYGPT_HUB_REPO, then the model that ships with the repo, in that order."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from tinygpt.checkpoint import CheckpointError, find_loss_curve, load_checkpoint
from tinygpt.device import pick_device
from tinygpt.hub import download_checkpoint, is_repo_id
from tinygpt.model import GPT
from tinygpt.quantize import default_precision, for_serving
from tinygpt.ship import SHIPPED_MODEL
from tinygpt.tokenizer import Tokenizer

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


@dataclass
class LoadedModel:
    model: GPT
    info: dict  # config.json of the checkpoint
    tokenizer: Tokenizer
    source: str  # where it came from, for the page
    directory: Path
    precision: str = "fp32"
    num_params: int = 0

    @property
    def loss_png(self) -> Path | None:
        return find_loss_curve(self.directory)

    @property
    def shipped(self) -> bool:
        """The model that comes with the repo (not one the user trained or chose)."""
        return self.directory.resolve() == SHIPPED_MODEL


def resolve_source(checkpoint: str | None = None) -> str | None:
    """The checkpoint to serve (a path or a repo id), or None when there is none to be had."""
    for candidate in (checkpoint, os.environ.get("TINYGPT_CHECKPOINT")):
        if candidate:
            return candidate
    if (Path(DEFAULT_CHECKPOINT) / "config.json").is_file():
        return DEFAULT_CHECKPOINT
    if hub := os.environ.get("TINYGPT_HUB_REPO"):
        return hub
    return str(SHIPPED_MODEL) if (SHIPPED_MODEL / "config.json").is_file() else None


def load_for_serving(source: str, device: torch.device | None = None, precision: str | None = None) -> LoadedModel:
    """Load a local checkpoint directory or a Hub repo id for inference on `device`, converted to
    `precision` (default: $TINYGPT_PRECISION, else the device's fastest, int8 on CPUs)."""
    if Path(source).exists():
        directory = Path(source)
    elif is_repo_id(source):
        directory = download_checkpoint(source)
    else:
        raise CheckpointError(f"{source}: no such checkpoint directory, and not a Hub repo id (USER/NAME)")
    device = device or pick_device()
    model, info = load_checkpoint(directory, device)
    precision = precision or os.environ.get("TINYGPT_PRECISION") or default_precision(device)
    served = for_serving(model, precision)
    log.info("serving %s (%.1fM parameters) in %s", source, model.num_params() / 1e6, precision)
    return LoadedModel(served, info, Tokenizer(), source, directory, precision, model.num_params())
