"""Training to a wall-clock budget: parse '90s' / '60m' / '2h', and turn measured step and evaluation times into
the number of steps that ends the run on time (so the learning rate can decay to the end of the budget)."""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Callable

_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """'90s', '60m', '1.5h' or a bare number of seconds -> seconds (> 0). ValueError says the format."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([smh]?)\s*", text.lower())
    seconds = float(match[1]) * _UNITS[match[2] or "s"] if match else 0.0
    if seconds <= 0:
        raise ValueError(f"--time-budget: expected a duration like 90s, 60m or 2h, got {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


@dataclass
class TimeBudget:
    """The clock of a run with a deadline. `steps_that_fit` is asked after the warm-up and after each evaluation.

    Time per step is measured over the steps since the last measurement point, so evaluations, checkpoints and
    start-up are not counted as training; they are measured on their own and reserved for.
    """

    seconds: float
    clock: Callable[[], float] = time.monotonic
    start: float | None = None  # default: the clock now
    eval_seconds: float = 0.0  # the last evaluation + checkpoint, measured
    final_seconds: float = 0.0  # the closing full evaluation + checkpoint, estimated from eval_seconds

    def __post_init__(self) -> None:
        if self.start is None:
            self.start = self.clock()

    @property
    def deadline(self) -> float:
        return self.start + self.seconds

    def left(self) -> float:
        return self.deadline - self.clock()

    def steps_that_fit(self, step_seconds: float, eval_every: int) -> int:
        """How many more optimizer steps end the run on time, leaving room for the evaluations among them
        (one per `eval_every` steps) and the final one."""
        room = self.left() - self.final_seconds
        per_step = step_seconds + self.eval_seconds / eval_every
        return max(0, math.floor(room / per_step)) if per_step > 0 else 0

    def plan(self, step: int, step_seconds: float, eval_every: int, eval_tokens: int, step_tokens: int,
             final_tokens: int) -> int:
        """The last step of a run that ends on time, from step `step` at `step_seconds` a step. Before the first
        evaluation is measured it is estimated (a forward pass is about a third of a training step); the final
        evaluation scores `final_tokens` more than an ordinary one's `eval_tokens`."""
        if not self.eval_seconds:
            self.eval_seconds = step_seconds * eval_tokens / (3 * step_tokens)
        self.final_seconds = self.eval_seconds * (1 + final_tokens / eval_tokens)
        return step + self.steps_that_fit(step_seconds, eval_every)
