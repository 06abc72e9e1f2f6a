"""The learning-rate schedule: linear warmup, then cosine decay to `min_lr`, per optimizer step."""
from __future__ import annotations

import math


def lr_at(step: int, learning_rate: float, min_lr: float, warmup_iters: int, decay_iters: int) -> float:
    """Learning rate for optimizer step `step` (0-based): warmup reaches the peak at step warmup_iters - 1,
    cosine reaches `min_lr` at step decay_iters - 1 (the last step when decay_iters = max_iters)."""
    if step < warmup_iters:
        return learning_rate * (step + 1) / warmup_iters
    if step >= decay_iters - 1:
        return min_lr
    progress = (step - warmup_iters + 1) / max(1, decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (learning_rate - min_lr)
