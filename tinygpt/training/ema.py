"""An exponential moving average of the weights: a second copy of the model that trails the trained one, for
evaluation, best/ and the shipped model (averaging smooths out the noise of the last steps)."""
from __future__ import annotations

import copy

import torch

from tinygpt.model.gpt import GPT


class EMA:
    """`EMA(model, decay)`; `update(model, step)` after each optimizer step; `model` is the average. The decay
    ramps up as min(decay, (1 + step) / (10 + step)), so early weights, far from good, are soon forgotten."""

    def __init__(self, model: GPT, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"--ema must be between 0 and 1 (a decay like 0.998), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: GPT, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        averaged = list(self.model.parameters())
        torch._foreach_lerp_(averaged, [p.detach() for p in model.parameters()], 1.0 - decay)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The averaged parameters by name, on the CPU (for the training state)."""
        return {f"ema.{n}": p.detach().cpu().contiguous() for n, p in self.model.named_parameters()}

    @torch.no_grad()
    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        for n, p in self.model.named_parameters():
            p.copy_(tensors[f"ema.{n}"])
