"""Sampling settings (`SamplingParams`, whose ranges and defaults the UI, the API and training samples all read)
and small named functions that turn next-token logits into tokens, on the device, without reading them back.
They work on a batch of streams (B, vocab), each stream with its own settings and uniform draw."""
from __future__ import annotations

import math
import secrets
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
    # defaults from bench/story_quality.py (bench/RESULTS.md): min-p 0.05 trimmed loops and made-up words and kept
    # the hero; the penalty also pushes the hero's name away, so it is the reader's choice
    min_p: float = field(default=0.05, metadata=_limit(0.0, 0.5, 0.01, "Min-p", "0 = off; drops tokens less "
                                                      "likely than this share of the likeliest"))
    repetition_penalty: float = field(default=1.0, metadata=_limit(1.0, 2.0, 0.05, "Repetition penalty",
                                                                   "1 = off; tokens already in the story"))
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


def resolve_seed(seed: int | None) -> int:
    """The seed a story is drawn with: the one given, else a fresh one (shown, so the story can be had again)."""
    return secrets.randbelow(2**31) if seed is None else seed


TOP_K_MAX = int(SamplingParams.limits()["top_k"]["range"][1])  # the static size of the candidate list
ALT_MAX = 20  # the most alternatives reported (SamplingParams.alternatives)
# A step's result, one row per stream (`describe` packs it, `unpack_row` reads it): the token, its probability,
# then ALT_MAX alternative ids and their probabilities.
TOKEN, PROB, ALT_IDS, ALT_PROBS = 0, 1, slice(2, 2 + ALT_MAX), slice(2 + ALT_MAX, 2 + 2 * ALT_MAX)


def settings_tensor(params: SamplingParams | list[SamplingParams], device: torch.device | str = "cpu"
                    ) -> torch.Tensor:
    """[temperature, top_k, top_p, min_p, repetition_penalty] per stream, (B, 5): a compiled step takes any
    settings without recompiling."""
    rows = [params] if isinstance(params, SamplingParams) else params
    return torch.tensor([[p.temperature, p.top_k, p.top_p, p.min_p, p.repetition_penalty] for p in rows],
                        dtype=torch.float32, device=device)


def top_p_probs(sorted_probs: torch.Tensor, p: torch.Tensor | float) -> torch.Tensor:
    """Zero all but the smallest head of each row of descending `sorted_probs` (B, K) whose mass reaches p (a
    float, or (B, 1) per row; p >= 1: keep all)."""
    before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the tokens ranked above each one
    return sorted_probs.masked_fill((before >= p) & (torch.as_tensor(p) < 1), 0.0)


def min_p_probs(probs: torch.Tensor, min_p: torch.Tensor | float) -> torch.Tensor:
    """Zero the probabilities in each row of `probs` (B, K) below min_p (a float, or (B, 1)) times the row's
    largest: the cut follows the model's confidence (0 = keep all)."""
    return probs.masked_fill(probs < min_p * probs.amax(-1, keepdim=True), 0.0)


def penalize(values: torch.Tensor, ids: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """Logits `values` (B, K) of token `ids` (B, K), those already in the story (`seen` (B, vocab) bool) made
    less likely by `penalty` (B, 1) >= 1, as CTRL does: a positive logit divided by it, a negative one multiplied
    (penalty 1: unchanged)."""
    hit = seen.gather(1, ids)
    return torch.where(hit, torch.where(values > 0, values / penalty, values * penalty), values)


def sample_index(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Per row of `probs` (B, K), the index that uniform u (B,) in [0, 1) selects with probability proportional
    to probs, by inverting the CDF: a cumsum and a binary search (20x faster than torch.multinomial over a 50k
    vocabulary). (B,) indices."""
    cdf = probs.cumsum(-1)
    return torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0].clamp(max=probs.size(-1) - 1)


def sample_candidates(values: torch.Tensor, settings: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The index of the chosen candidate per stream (B,), from candidate logits `values` (B, K): in descending
    order when top-k or top-p apply (else any order). Temperature 0 picks the first; top_k 0 keeps every
    candidate; then min-p, then top-p. Static shapes and tensor settings (B, 5) (see `settings_tensor`), so the
    same code runs eagerly and in a compiled step."""
    temperature, top_k, top_p, min_p = settings[:, :4, None].unbind(1)  # each (B, 1)
    rank = torch.arange(values.size(-1), device=values.device)
    scaled = (values / temperature.clamp(min=1e-6)).masked_fill((top_k > 0) & (rank >= top_k), float("-inf"))
    probs = top_p_probs(min_p_probs(scaled.softmax(-1), min_p), top_p)
    return torch.where(temperature[:, 0] == 0, 0, sample_index(probs, u))


def describe(values: torch.Tensor, ids: torch.Tensor, j: torch.Tensor, lse: torch.Tensor, top_values: torch.Tensor,
             top_ids: torch.Tensor) -> torch.Tensor:
    """Per stream, the packed row (TOKEN, PROB, ALT_IDS, ALT_PROBS) for candidate j (B,) of `values`/`ids` (B, K)
    and the descending `top_values`/`top_ids`: one float64 tensor (B, 2 + 2 * ALT_MAX), so the caller reads the
    device once per step. Probabilities are the model's own (temperature 1, before top-k/top-p). Gathers, not
    ids[j]: indexing with a tensor reads it back to the host."""
    lse, j = lse[:, None], j[:, None]
    parts = [ids.gather(1, j).double(), (values.gather(1, j) - lse).exp().double(),
             top_ids[:, :ALT_MAX].double(), (top_values[:, :ALT_MAX] - lse).exp().double()]
    return torch.cat(parts, dim=1)


def unpack_row(row: list[float], n_alternatives: int) -> tuple[int, float, tuple[tuple[int, float], ...]]:
    """One stream's packed row as (token id, its probability, the top `n_alternatives` as (id, probability))."""
    alternatives = zip(map(int, row[ALT_IDS][:n_alternatives]), row[ALT_PROBS][:n_alternatives])
    return int(row[TOKEN]), row[PROB], tuple(alternatives)


def pick_top(values: torch.Tensor, ids: torch.Tensor, lse: torch.Tensor, settings: torch.Tensor, u: torch.Tensor,
             seen: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy or top-k (1..TOP_K_MAX) sampling from the TOP_K_MAX largest logits per stream, descending, and
    their ids (B, K), described (see `describe`); `lse` (B,) is the logsumexp of all of them. One top-k serves
    the candidates and the alternatives: over 50k logits it is the costliest op here. With `seen` (B, vocab),
    the repetition penalty re-ranks the candidates (a stable sort: penalty 1 keeps their order)."""
    if seen is None:
        return describe(values, ids, sample_candidates(values, settings, u), lse, values, ids)
    scores, order = penalize(values, ids, seen, settings[:, 4:5]).sort(dim=-1, descending=True, stable=True)
    j = sample_candidates(scores, settings, u)
    return describe(values.gather(1, order), ids.gather(1, order), j, lse, values, ids)


def candidates_needed(params: list[SamplingParams]) -> int:
    """How many of the TOP_K_MAX best logits pick_top needs to give these streams what it gives them with all of
    them: the largest top_k (greedy: the first) and the ALT_MAX alternatives reported; all TOP_K_MAX when a
    repetition penalty may re-rank them. (Candidates past a stream's top_k get no probability, so its CDF and its
    draw are the same.) The one-pass step ranks only these."""
    if any(p.repetition_penalty != 1.0 for p in params):
        return TOP_K_MAX
    return max([ALT_MAX, *(1 if p.greedy else p.top_k for p in params)])


def choose_token(logits: torch.Tensor, params: SamplingParams, u: torch.Tensor, lse: torch.Tensor | None = None,
                 seen: torch.Tensor | None = None) -> torch.Tensor:
    """Next tokens from last-position logits (B, vocab), all with the same `params`, drawn with uniforms u (B,),
    described (see `describe`). `lse`: logits.logsumexp(-1) if the caller has it; `seen` (B, vocab) bool: the
    tokens of each story so far, for the repetition penalty."""
    lse = logits.logsumexp(-1) if lse is None else lse
    settings = settings_tensor([params] * logits.size(0), logits.device)
    if params.greedy or params.top_k:
        top = torch.topk(logits, min(TOP_K_MAX, logits.size(-1)))
        return pick_top(top.values, top.indices, lse, settings, u, seen)
    ids = torch.arange(logits.size(-1), device=logits.device).expand_as(logits)
    scores = logits if seen is None else penalize(logits, ids, seen, settings[:, 4:5])
    values = logits
    if params.top_p < 1.0:  # the nucleus over the whole vocabulary needs it sorted
        scores, ids = torch.sort(scores, descending=True, stable=True)
        values = logits.gather(1, ids)
    top = torch.topk(logits, min(ALT_MAX, logits.size(-1)))
    return describe(values, ids, sample_candidates(scores, settings, u), lse, top.values, top.indices)
