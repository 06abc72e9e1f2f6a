"""Sampling settings (`SamplingParams`, whose ranges and defaults the UI, the API and training samples all read)
and small named functions that turn next-token logits into a token, on the device, without reading it back."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch


def _limit(low: float, high: float, step: float, label: str, info: str) -> dict:
    return {"range": (low, high), "step": step, "label": label, "info": info}


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token. Raises ValueError naming the first setting that is out of its range.

    Each field's metadata (`limits()`) gives its range, step and label: the playground's sliders and its API
    validation are built from them, so the page and the API accept the same values.
    """

    temperature: float = field(default=0.8, metadata=_limit(0.0, 2.0, 0.05, "Temperature", "0 = greedy"))
    top_k: int = field(default=50, metadata=_limit(0, 200, 1, "Top-k", "0 = off"))
    top_p: float = field(default=0.95, metadata=_limit(0.05, 1.0, 0.01, "Top-p", "1 = off"))
    max_new_tokens: int = field(default=200, metadata=_limit(1, 1024, 1, "Max new tokens", ""))
    seed: int | None = None  # None: a fresh random stream; else the same story for the same settings
    stop_at_eot: bool = True  # end at <|endoftext|>
    alternatives: int = 0  # report the top-N alternatives (and their probabilities) at each position

    def __post_init__(self) -> None:
        for f in fields(self):
            if "range" in f.metadata:
                integer = f.type == "int"
                value = getattr(self, f.name)
                _check_number(f.name, value, *f.metadata["range"], integer=integer)
                object.__setattr__(self, f.name, int(value) if integer else float(value))  # 3.0 -> 3 from JSON
        if self.seed is not None:
            _check_number("seed", self.seed, 0, 2**63 - 1, integer=True)
            object.__setattr__(self, "seed", int(self.seed))
        if not isinstance(self.alternatives, int) or not 0 <= self.alternatives <= 20:
            raise ValueError(f"alternatives must be an integer in [0, 20], got {self.alternatives!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @staticmethod
    def limits() -> dict[str, dict]:
        """{setting: {"range": (low, high), "step", "label", "info"}} for the settings a user chooses."""
        return {f.name: dict(f.metadata, default=f.default) for f in fields(SamplingParams) if "range" in f.metadata}


def _check_number(name: str, value: object, low: float, high: float, integer: bool) -> None:
    kind = "an integer" if integer else "a number"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and integer and isinstance(value, float):
        ok = value.is_integer()
    if not ok or not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"{name} must be {kind} in [{low}, {high}], got {value!r}")


def top_p_probs(sorted_probs: torch.Tensor, p: float) -> torch.Tensor:
    """Zero all but the smallest head of descending `sorted_probs` whose mass reaches p (p = 1: all)."""
    if p >= 1.0:
        return sorted_probs
    before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the tokens ranked above each one
    return sorted_probs.masked_fill(before >= p, 0.0)


def sample_index(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """An index drawn with probability proportional to `probs`, by inverting the CDF: one uniform number, a
    cumsum and a binary search (20x faster than torch.multinomial over a 50k vocabulary). A 0-d tensor."""
    cdf = probs.cumsum(-1)
    u = torch.rand((), generator=generator, device=probs.device) * cdf[-1]
    return torch.searchsorted(cdf, u[None], right=True)[0].clamp(max=probs.size(-1) - 1)


def sample_from(values: torch.Tensor, ids: torch.Tensor | None, temperature: float, top_p: float,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """A token id (0-d tensor) drawn from candidate logits `values` (descending when `ids` is given; ids None:
    values are the whole vocabulary) at `temperature`, restricted to the top-p nucleus."""
    probs = (values / temperature).softmax(-1)
    if top_p < 1.0:
        if ids is None:  # top-p needs the tokens in order; top-k already sorted them
            probs, ids = torch.sort(probs, descending=True)
        probs = top_p_probs(probs, top_p)
    j = sample_index(probs, generator)
    return j if ids is None else ids[j]


def choose_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None,
                 lse: torch.Tensor | None = None) -> torch.Tensor:
    """The next token from last-position logits (vocab,) and what the page shows about it, as one float64
    tensor [token, its probability, top-N ids..., their probabilities...] (N = params.alternatives), so the
    caller reads the device once per token. Probabilities are the model's own (temperature 1, no top-k/p).
    One torch.topk serves both top-k sampling and the alternatives: over 50k logits it costs ~90 us.
    `lse`: logits.logsumexp(-1), when the caller has it (a compiled step computes it fused, 10x faster)."""
    n_alt = params.alternatives
    k = n_alt if params.greedy or params.top_k == 0 else max(params.top_k, n_alt)
    top = torch.topk(logits, min(k, logits.size(-1))) if k else None
    if params.greedy:
        token = logits.argmax()
    elif params.top_k:
        token = sample_from(top.values[:params.top_k], top.indices[:params.top_k], params.temperature,
                            params.top_p, generator)
    else:
        token = sample_from(logits, None, params.temperature, params.top_p, generator)
    lse = logits.logsumexp(-1) if lse is None else lse
    parts = [token.double()[None], (logits[token] - lse).exp().double()[None]]
    if n_alt:
        parts += [top.indices[:n_alt].double(), (top.values[:n_alt] - lse).exp().double()]
    return torch.cat(parts)
