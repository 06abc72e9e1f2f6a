"""The training window schedule (`--half-window-frac`): windows of half the block first, the whole window last.

Short windows cost less attention per token, and a model learns what is near before what is far, so on a small
budget a run reads windows of half `--block-size` for the first share of its steps (twice as many a micro-batch:
a step's tokens stay the same), then the whole window to the end. While it reads half windows, the positions
past them follow the last one read (as a grown window's new positions start, training.warm_start): evaluations,
checkpoints and snapshots are then models of the whole window at every step, and the switch changes nothing
the model computes.
"""
from __future__ import annotations

import logging

import torch

from tinygpt.model.gpt import GPT

log = logging.getLogger(__name__)


def tie_positions(model: GPT, read: int) -> None:
    """Set `model`'s position embeddings from `read` on to the one at `read - 1`, in place."""
    with torch.no_grad():
        wpe = model.transformer.wpe.weight  # (block_size, C)
        wpe[read:] = wpe[read - 1]


class WindowSchedule:
    """The window each step reads: half of `block_size` until `half_frac` of the planned steps, then the whole.
    The switch is kept once made (`full_from`), since a time budget re-plans the run's end as it goes."""

    def __init__(self, block_size: int, half_frac: float, full_from: int | None = None) -> None:
        self.block_size, self.half_frac, self.full_from = block_size, half_frac, full_from

    def window(self, step: int, max_iters: int) -> int:
        if self.full_from is None and step >= self.half_frac * max_iters:
            self.full_from = step
            if step:
                log.info("windows of %d tokens from step %d of %d", self.block_size, step, max_iters)
        return self.block_size if self.full_from is not None else self.block_size // 2
