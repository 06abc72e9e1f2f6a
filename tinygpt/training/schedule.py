"""The learning-rate schedules, per optimizer step: linear warmup, then either a cosine decay to `min_lr`
(`cosine`) or warmup-stable-decay (`wsd`: the peak held, then a linear cooldown to `min_lr` over the last part
of the run, where the loss drops; under a time budget the cooldown starts when the re-planned run says)."""
from __future__ import annotations

import math

SCHEDULES = ("cosine", "wsd")


def lr_at(step: int, learning_rate: float, min_lr: float, warmup_iters: int, decay_iters: int) -> float:
    """Learning rate for optimizer step `step` (0-based): warmup reaches the peak at step warmup_iters - 1,
    cosine reaches `min_lr` at step decay_iters - 1 (the last step when decay_iters = max_iters)."""
    if step < warmup_iters:
        return learning_rate * (step + 1) / warmup_iters
    if step >= decay_iters - 1:
        return min_lr
    progress = (step - warmup_iters + 1) / max(1, decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (learning_rate - min_lr)


def cooldown_start(total: int, cooldown_frac: float, warmup_iters: int) -> int:
    """The first step of a WSD cooldown over the last `cooldown_frac` of `total` steps (never inside warmup)."""
    return max(warmup_iters, total - round(cooldown_frac * total))


def wsd_lr_at(step: int, learning_rate: float, min_lr: float, warmup_iters: int, total: int, start: int,
              start_lr: float | None = None) -> float:
    """Warmup to the peak, the peak until step `start`, then linear from `start_lr` (default: the peak) at step
    start - 1 to `min_lr` at step total - 1. A re-planned cooldown passes the step it was re-planned at and the
    rate it had reached, so the rate goes on down from there, never back up."""
    if step < min(start, warmup_iters):
        return learning_rate * (step + 1) / warmup_iters
    if step < start:
        return learning_rate
    top = learning_rate if start_lr is None else start_lr
    progress = min(1.0, (step - start + 1) / max(1, total - start))
    return top + (min_lr - top) * progress
