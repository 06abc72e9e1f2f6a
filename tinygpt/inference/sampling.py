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


TOP_K_MAX = int(SamplingParams.limits()["top_k"]["range"][1])  # the static size of the candidate list
ALT_MAX = 20  # the most alternatives reported (SamplingParams.alternatives)


def settings_tensor(params: SamplingParams, device: torch.device | str = "cpu") -> torch.Tensor:
    """[temperature, top_k, top_p] as one tensor: a compiled step takes any settings without recompiling."""
    return torch.tensor([params.temperature, params.top_k, params.top_p], dtype=torch.float32, device=device)


def top_p_probs(sorted_probs: torch.Tensor, p: torch.Tensor | float) -> torch.Tensor:
    """Zero all but the smallest head of descending `sorted_probs` whose mass reaches p (p >= 1: all)."""
    before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the tokens ranked above each one
    return sorted_probs.masked_fill((before >= p) & (torch.as_tensor(p) < 1), 0.0)


def sample_index(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The index that uniform `u` in [0, 1) selects with probability proportional to `probs`, by inverting the
    CDF: a cumsum and a binary search (20x faster than torch.multinomial over a 50k vocabulary). 0-d tensor."""
    cdf = probs.cumsum(-1)
    return torch.searchsorted(cdf, (u * cdf[-1])[None], right=True)[0].clamp(max=probs.size(-1) - 1)


def sample_candidates(values: torch.Tensor, ids: torch.Tensor, settings: torch.Tensor, u: torch.Tensor
                      ) -> torch.Tensor:
    """A token id (0-d) from candidate logits `values` and their ids: in descending order when top-k or top-p
    apply (else any order). Temperature 0 picks the first; top_k 0 keeps every candidate. Static shapes and
    tensor settings, so the same code runs eagerly and inside a compiled step."""
    temperature, top_k, top_p = settings.unbind()
    rank = torch.arange(values.size(-1), device=values.device)
    scaled = (values / temperature.clamp(min=1e-6)).masked_fill((top_k > 0) & (rank >= top_k), float("-inf"))
    probs = top_p_probs(scaled.softmax(-1), top_p)
    j = torch.where(temperature == 0, 0, sample_index(probs, u))
    return ids.gather(0, j[None])[0]  # gather, not ids[j]: indexing with a tensor reads it back to the host


def describe(logits: torch.Tensor, lse: torch.Tensor, token: torch.Tensor, top: torch.return_types.topk
             ) -> torch.Tensor:
    """[token, its probability, ALT_MAX top ids, their probabilities] as one float64 tensor, so the caller
    reads the device once per token. Probabilities are the model's own (temperature 1, before top-k/top-p)."""
    parts = [token[None].double(), (logits.gather(0, token[None]) - lse).exp().double(), top.indices[:ALT_MAX].double(),
             (top.values[:ALT_MAX] - lse).exp().double()]
    return torch.cat(parts)


def pick_top(logits: torch.Tensor, lse: torch.Tensor, settings: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Greedy or top-k (1..TOP_K_MAX) sampling from logits (vocab,), described (see `describe`). One
    torch.topk serves the candidates and the alternatives: over 50k logits it is the costliest op here."""
    top = torch.topk(logits, min(TOP_K_MAX, logits.size(-1)))
    return describe(logits, lse, sample_candidates(top.values, top.indices, settings, u), top)


def choose_token(logits: torch.Tensor, params: SamplingParams, u: torch.Tensor, lse: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """The next token from last-position logits (vocab,) drawn with uniform `u`, described (see `describe`).
    `lse`: logits.logsumexp(-1) if the caller has it (a compiled step computes it fused)."""
    lse = logits.logsumexp(-1) if lse is None else lse
    settings = settings_tensor(params, logits.device)
    if params.greedy or params.top_k:
        return pick_top(logits, lse, settings, u)
    if params.top_p < 1.0:  # the nucleus over the whole vocabulary needs it sorted
        values, ids = torch.sort(logits, descending=True)
    else:
        values, ids = logits, torch.arange(logits.size(-1), device=logits.device)
    token = sample_candidates(values, ids, settings, u)
    return describe(logits, lse, token, torch.topk(logits, min(ALT_MAX, logits.size(-1))))
