"""Starting a run from a saved model's weights (`train.py --init-from DIR`), its window grown if asked.

Training short windows first and long ones after is cheaper than long ones from the start (the attention of
the early steps costs less, and a model first learns what is near); this is how a window grows on a small
budget. The saved model's shape and vocabulary win over the flags; only the window (`--block-size`, which may
grow, never shrink) and dropout come from them. New positions start as copies of the last trained one: the
model reads them as "late in the window" from the first step, and training tells them apart.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from tinygpt.model.checkpoint import CheckpointError, load_checkpoint
from tinygpt.model.gpt import GPT, GPTConfig
from tinygpt.training.windows import tie_positions

log = logging.getLogger(__name__)


def grow_window(model: GPT, block_size: int, dropout: float | None = None) -> GPT:
    """A copy of `model` with a window of `block_size` (>= its own; and `dropout`, if given): the same weights,
    positions past the old window set to its last position's embedding. Raises ValueError for a smaller window."""
    old = model.config.block_size
    if block_size < old:
        raise ValueError(f"--block-size {block_size} is smaller than the saved model's window ({old}); a window "
                         f"can grow, not shrink: use --block-size {old} or more")
    dropout = model.config.dropout if dropout is None else dropout
    grown = GPT(dataclasses.replace(model.config, block_size=block_size, dropout=dropout))
    state = model.state_dict()
    wpe = state["transformer.wpe.weight"]  # (old, C)
    state["transformer.wpe.weight"] = torch.cat([wpe, wpe.new_empty(block_size - old, wpe.shape[1])])
    grown.load_state_dict(state)
    tie_positions(grown, old)  # (block_size, C): the new positions start as the last trained one
    return grown


def warm_start(directory: str | Path, flags: GPTConfig) -> GPT:
    """The model saved in `directory` (a checkpoint folder: best/, last/, a shipped model), in training mode,
    with the window and dropout of `flags`; its other settings are the saved model's (logged where they
    differ from the flags)."""
    try:
        model, _ = load_checkpoint(directory)
    except CheckpointError as e:
        raise ValueError(f"--init-from: {e}") from e
    saved = model.config
    differ = [f"{f.name} {getattr(saved, f.name)} (flag: {getattr(flags, f.name)})"
              for f in dataclasses.fields(GPTConfig) if f.name not in ("block_size", "dropout", "kept_tokens")
              and getattr(saved, f.name) != getattr(flags, f.name)]
    if differ:
        log.info("--init-from %s: the saved model's %s", directory, ", ".join(differ))
    model = grow_window(model, flags.block_size, flags.dropout)
    log.info("starting from %s: window %d -> %d", directory, saved.block_size, flags.block_size)
    return model.train()
