"""The token-level inference engine: token ids in; sampled ids, their probabilities and the top alternatives out.

It owns the decode step: every stream in a batch feeds its newest token through `GPT.forward` (the model's own
modules, nothing re-implemented) with a KV cache, and gets one sampled token back, sampled on the device, with
one read from the device per step for the whole batch. A single stream is a batch of one (`generate`); the
continuous batcher (tinygpt.serving.batching) runs the same step over many. When a stream reaches the
context length, the context slides: the last 3/4 of it is re-encoded from position 0 (positions are absolute),
a bounded cost once every block_size/4 tokens.

The step can be compiled (`compile=True`, or one batch size at a time with `compile_size`, as a server warming up
does between stories): torch.compile of the same forward plus sampling, with static shapes (the cache is
preallocated and attention is masked), once per batch size in `batch_sizes`; a batch is padded to the next
compiled one, and runs eagerly where there is none. A CPU serving copy on our kernels (int8, int4) takes the
one-pass step instead (tinygpt.kernels.one_pass: the whole forward, ranking and sampling in one call, at any batch
size, nothing to compile); `one_pass=False` keeps the modules' step. Text is not this module's business: see
tinygpt.inference.story.
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from tinygpt import kernels
from tinygpt.data.tokenizer import EOT_ID
from tinygpt.inference.sampling import (ALT_MAX, TOP_K_MAX, SamplingParams, candidates_needed, choose_token,
                                        pick_top, resolve_seed, settings_tensor, unpack_row)
from tinygpt.inference.vocab import VocabTopK
from tinygpt.kernels import one_pass
from tinygpt.kernels.quantize import cache_dtype
from tinygpt.model.gpt import GPT
from tinygpt.model.kv_cache import KVCache

log = logging.getLogger(__name__)
PADDING = SamplingParams(temperature=0)  # the settings of a batch's unused rows


@dataclass(frozen=True)
class SampledToken:
    """One sampled token: its id, the model's probability for it (temperature 1, before top-k/top-p) and the
    most likely tokens at that position as (id, probability), best first."""

    id: int
    prob: float
    alternatives: tuple[tuple[int, float], ...] = ()


def sliding_keep(block_size: int) -> int:
    """The tokens a stream keeps when its context slides past block_size: the last 3/4 of them."""
    return max(1, block_size - max(1, block_size // 4))


def windows_read(prompt_ids: list[int], ids: list[int], block_size: int, eot_id: int = EOT_ID
                 ) -> Iterator[tuple[list[int], int, int]]:
    """The windows a stream read while it wrote `ids` after `prompt_ids`, one per slide: (window, i, n): the
    window's positions i-1 .. i+n-2 predicted ids[k .. k+n-1] (k: the ids of the earlier windows), so one
    forward pass over each window scores every token as it was written."""
    keep, context, done = sliding_keep(block_size), list(prompt_ids[-block_size:]) or [eot_id], 0
    while done < len(ids):
        n = min(len(ids) - done, block_size - len(context) + 1)  # predictions before the context next slides
        yield context + ids[done:done + n - 1], len(context), n
        context += ids[done:done + n]
        done += n
        if len(context) > block_size:
            context = context[-keep:]


@dataclass(eq=False)
class Stream:
    """One stream's decoding state: its context (every token but the last is in its cache row; the last is
    the next step's input), its settings, its own random draws, and whether it is done."""

    context: list[int]
    params: SamplingParams
    block_size: int
    keep: int  # tokens kept when the context slides
    eot_id: int = EOT_ID
    rng: random.Random = field(default_factory=random.Random)
    produced: int = 0
    stale: bool = True  # its cache row does not hold context[:-1] yet (a new stream, or one that slid)
    done: bool = False
    seen: torch.Tensor | None = None  # (vocab,) bool: every token of the story so far, for a repetition penalty

    def push(self, token: int) -> None:
        """Append `token`; past block_size, keep the last `keep` tokens (the cache row must then be rebuilt)."""
        self.context.append(token)
        if self.seen is not None:
            self.seen[token] = True
        if len(self.context) > self.block_size:
            del self.context[:-self.keep]
            self.stale = True

    def uniform(self) -> float:
        """The next draw in [0, 1), exact in float32 (a float64 near 1 would round up to 1.0)."""
        return self.rng.getrandbits(24) / 2**24

    def accept(self, row: list[float]) -> SampledToken:
        """The step's packed row for this stream (sampling.unpack_row) as a SampledToken, appended."""
        token = SampledToken(*unpack_row(row, self.params.alternatives))
        self.produced += 1
        self.done = token.id == self.eot_id and self.params.stop_at_eot or self.produced == self.params.max_new_tokens
        self.push(token.id)
        return token


class PositionError(RuntimeError):
    """A decode step was asked to run a stream at a position outside the context (a bug: the step is not run)."""


class Engine:
    """Generates token ids from a model; one Engine serves many streams (each with its own cache rows)."""

    def __init__(self, model: GPT, compile: bool = False, eot_id: int = EOT_ID,
                 batch_sizes: tuple[int, ...] = (1,), one_pass: bool = True) -> None:
        self.model, self.eot_id = model, eot_id
        self.block_size = model.config.block_size
        self.keep = sliding_keep(self.block_size)
        self.device = model.transformer.wpe.weight.device
        self.batch_sizes = tuple(sorted(set(batch_sizes)))
        self.cache_dtype = cache_dtype(model)
        # ranking the logits: our kernel where a serving copy has loaded them (this never builds them)
        rank = kernels.topk if self.device.type == "cpu" and kernels.loaded() else torch.topk
        self._topk = VocabTopK(model, min(TOP_K_MAX, model.config.vocab_size), rank)
        self._one_pass = _one_pass_step(model, self._topk) if one_pass else None
        self._logits = _eager_decode(model)
        self._eager_pick = decode_and_sample(model, self._topk)  # the modules' step, until one is compiled
        self._no_seen: torch.Tensor | None = None
        self._step: Callable[..., torch.Tensor] | None = None  # the decode step under torch.compile, once asked
        self._pick: dict[int, Callable[..., torch.Tensor]] = {}  # batch size -> its compiled step
        self.compile_failed = False
        if compile:
            self.compile_all()

    @property
    def one_pass_step(self) -> one_pass.OnePassStep | None:
        """The one-pass step each decode step runs (tinygpt.kernels.one_pass), or None: the modules' step."""
        return self._one_pass

    @property
    def compiled(self) -> bool:
        """Whether the step is compiled for every batch size (until then, a batch with no compiled size runs
        eagerly); the one-pass step needs no compiling."""
        return self._one_pass is not None or len(self._pick) == len(self.batch_sizes)

    def uncompiled_sizes(self) -> tuple[int, ...]:
        """The batch sizes still to compile, smallest first; none once compiling has failed."""
        if self.compile_failed or self._one_pass is not None:
            return ()
        return tuple(B for B in self.batch_sizes if B not in self._pick)

    def compile_all(self) -> bool:
        """Compile the decode step for every batch size now (a stream then never waits on the compiler)."""
        t0 = time.perf_counter()
        while (sizes := self.uncompiled_sizes()) and self.compile_size(sizes[0]):
            pass
        if self.compiled and self._one_pass is None:
            log.info("decode step compiled for batch sizes %s in %.1f s", self.batch_sizes, time.perf_counter() - t0)
        return self.compiled

    def compile_size(self, B: int) -> bool:
        """Compile (trace and run once) the decode step for batch size B; from then on a batch padded to B uses
        it. On any failure (no C++ compiler, say) the engine stays eager for good: False. The one-pass step needs
        none: True."""
        if self._one_pass is not None:
            return True
        try:
            self._step = self._step or compile_step(decode_and_sample(self.model, self._topk), self.device)
            with torch.no_grad():
                self._step(torch.zeros(B, 1, dtype=torch.long, device=self.device), self.new_cache(B),
                           settings_tensor([PADDING] * B, self.device), torch.zeros(B, device=self.device),
                           self._unseen(B))
        except Exception as e:  # noqa: BLE001 - any compiler failure leaves a working eager engine
            log.warning("torch.compile of the decode step failed (%s: %s); decoding eagerly",
                        type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
            self.compile_failed = True
            return False
        self._pick = {**self._pick, B: _skipping_guards(self._step)}
        return True

    def new_cache(self, batch_size: int) -> KVCache:
        """A KV cache for `batch_size` streams of this engine's model, in the dtype its attention reads."""
        return self.model.new_cache(batch_size, self.cache_dtype)

    def new_stream(self, ids: list[int], params: SamplingParams) -> Stream:
        """A stream for prompt `ids`: none starts from <|endoftext|>; more than block_size keeps the last ones."""
        rng = random.Random(resolve_seed(params.seed))
        stream = Stream(list(ids[-self.block_size:]) or [self.eot_id], params, self.block_size, self.keep,
                        self.eot_id, rng)
        if params.repetition_penalty != 1.0:  # the whole prompt counts, also what slid out of the context
            stream.seen = torch.zeros(self.model.config.vocab_size, dtype=torch.bool, device=self.device)
            stream.seen[torch.tensor(list(ids) or [self.eot_id], device=self.device)] = True
        return stream

    def _unseen(self, B: int) -> torch.Tensor:
        """(B, vocab) all False: the `seen` of a batch in which no story has a repetition penalty."""
        if self._no_seen is None or self._no_seen.size(0) < B:
            self._no_seen = torch.zeros(B, self.model.config.vocab_size, dtype=torch.bool, device=self.device)
        return self._no_seen[:B]

    def _seen(self, streams: list[Stream], B: int) -> torch.Tensor:
        """(B, vocab): each stream's story so far (rows without a penalty or past the streams: none)."""
        if all(s.seen is None for s in streams):
            return self._unseen(B)
        none = self._unseen(1)[0]
        return torch.stack([s.seen if s.seen is not None else none for s in streams] + [none] * (B - len(streams)))

    def rows_needed(self, n: int) -> int:
        """The cache rows a step over up to n streams may use, now or once every batch size is compiled."""
        return next((B for B in self.batch_sizes if B >= n), n)

    def padded_size(self, n: int) -> int:
        """The batch size a step over n streams runs at: the next compiled size, else n itself (eager, or the
        one-pass step, which takes any)."""
        return next((B for B in sorted(self._pick) if B >= n), n)

    @torch.no_grad()  # not inference_mode: the compiled step cannot take inference tensors
    def generate(self, ids: list[int], params: SamplingParams) -> Iterator[SampledToken]:
        """Yield each new token of one stream as it is sampled (a batch of one). Stops after <|endoftext|>
        when params.stop_at_eot, or after params.max_new_tokens."""
        stream, cache = self.new_stream(ids, params), self.new_cache(self.padded_size(1))
        while not stream.done:
            yield self.advance(cache, [stream])[0]

    @torch.no_grad()
    def advance(self, cache: KVCache, streams: list[Stream]) -> list[SampledToken]:
        """One decode step: stream i, in row i of `cache`, feeds its newest token and gets the next one (also
        appended to its context). Rows past the streams, up to the padded size, are scratch."""
        self._load_stale(cache, streams)
        n, B = len(streams), self.padded_size(len(streams))
        view = cache.rows(0, B)
        self._set_positions(view, streams)
        idx = torch.tensor([s.context[-1] for s in streams] + [self.eot_id] * (B - n), device=self.device)[:, None]
        u = torch.tensor([s.uniform() for s in streams] + [0.0] * (B - n), device=self.device)
        params, seen = [s.params for s in streams] + [PADDING] * (B - n), self._seen(streams, B)
        ranked = all(p.greedy or p.top_k for p in params)  # the common case: from the best candidates
        if ranked and self._one_pass:  # on x86, the whole step in one call
            out = self._one_pass(idx, view, settings_tensor(params), u, seen, candidates_needed(params))
        elif ranked:  # elsewhere, decode and sample in one (compiled) call
            out = self._pick.get(B, self._eager_pick)(idx, view, settings_tensor(params, self.device), u, seen)
        else:  # sampling over the whole vocabulary (top_k 0)
            logits, lse = self._logits(idx, view)
            out = torch.cat([choose_token(logits[i:i + 1], p, u[i:i + 1], lse[i:i + 1], seen[i:i + 1])
                             for i, p in enumerate(params)])
        return [stream.accept(row) for stream, row in zip(streams, out.tolist())]  # the one read per step

    def _set_positions(self, view: KVCache, streams: list[Stream]) -> None:
        """Before a step: each row's position from its stream (its cache holds context[:-1]), the padding rows
        past the streams at 0, checked on the host. Every row runs, padding too, and a position past the last
        slot would index past the position table: eagerly an IndexError, but the compiled step's bounds check
        aborts the whole server. Raises PositionError instead, before anything runs."""
        positions = [len(s.context) - 1 for s in streams]
        bad = [(row, pos) for row, pos in enumerate(positions) if not 0 <= pos < self.block_size]
        if bad:
            raise PositionError(f"cache rows at positions outside [0, {self.block_size}): "
                                + ", ".join(f"row {row} at {pos}" for row, pos in bad))
        positions += [0] * (view.batch_size - len(streams))
        view.pos.copy_(torch.tensor(positions, device=self.device))

    def _load_stale(self, cache: KVCache, streams: list[Stream]) -> None:
        """Load every stale stream; neighbours whose contexts have the same length in one forward (streams
        that join together, as a crowd arriving with one example prompt does, are prefilled as a batch)."""
        row = 0
        while row < len(streams):
            if not streams[row].stale:
                row += 1
                continue
            end = row + 1
            while end < len(streams) and streams[end].stale and len(streams[end].context) == len(streams[row].context):
                end += 1
            self.load(cache, row, streams[row:end])
            row = end

    def load(self, cache: KVCache, row: int, streams: list[Stream]) -> None:
        """Encode all but the last token of each stream's context (all of one length) into rows row, row+1, ...
        of `cache`, from position 0."""
        view = cache.rows(row, len(streams))
        view.reset(0)
        if len(streams[0].context) > 1:
            contexts = [s.context[:-1] for s in streams]
            self.model.hidden(torch.tensor(contexts, dtype=torch.long, device=self.device), cache=view)  # no head
        for stream in streams:
            stream.stale = False

    @torch.no_grad()
    def logits(self, cache: KVCache, stream: Stream) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing (tests, evaluation): feed a single stream's newest token (cache row 0) and return the
        next-token logits (vocab,) and their logsumexp, without sampling. `stream.push` the next token."""
        if stream.stale:
            self.load(cache, 0, [stream])
        logits, lse = self._logits(torch.tensor([[stream.context[-1]]], device=self.device), cache.rows(0, 1))
        return logits[0], lse[0]


def _last_logits(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 1, vocab) -> fp32 logits (B, vocab) and their logsumexp (B,), which the probabilities shown need."""
    logits = logits[:, -1].float()
    return logits, logits.logsumexp(-1)


def _eager_decode(model: GPT) -> Callable[[torch.Tensor, KVCache], tuple[torch.Tensor, torch.Tensor]]:
    def decode(idx: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, torch.Tensor]:
        return _last_logits(model(idx, cache=cache)[0])
    return decode


def decode_and_sample(model: GPT, topk: VocabTopK) -> Callable[..., torch.Tensor]:
    """The decode step with greedy or top-k sampling. It ranks the head's rows (VocabTopK): for a model with
    kept tokens, a fifth of the vocabulary, with the same candidates and draws as ranking all 50,257 logits."""
    def decode_pick(idx: torch.Tensor, cache: KVCache, settings: torch.Tensor, u: torch.Tensor,
                    seen: torch.Tensor) -> torch.Tensor:
        rows = model.lm_head(model.hidden(idx, cache)[:, -1]).float()  # (B, n_rows): one token per stream
        values, ids = topk(rows)
        return pick_top(values, ids, rows.logsumexp(-1), settings, u, seen)  # the rows' lse is the vocabulary's
    return decode_pick


def _one_pass_step(model: GPT, topk: VocabTopK) -> one_pass.OnePassStep | None:
    """The one-pass step (tinygpt.kernels.one_pass) where it runs this model, else None; logs which step runs."""
    reason = one_pass.unavailable(model)
    if reason is None:
        log.info("decode step: one pass per token (tinygpt.kernels.one_pass)")
        kept = (topk.id_of_row, topk.shared_ids) if topk.kept else ()
        return one_pass.OnePassStep(model, topk.k, ALT_MAX, *kept)
    log.info("decode step: the model's modules, compiled once asked (no one-pass step: %s)", reason)
    return None


def _skipping_guards(compiled: Callable) -> Callable:
    """Call `compiled` without re-checking Dynamo's guards on every parameter (a large share of a small step's
    time on a CPU); with one graph per batch size, only the guards that tell them apart run. Safe here: the
    engine only ever passes the shapes and dtypes it compiled for."""
    def call(*args: object) -> object:
        with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
            return compiled(*args)
    return call


def compile_step(fn: Callable, device: torch.device) -> Callable:
    """`fn` (a decode step through the model's modules, one token per stream) under torch.compile: static
    shapes, one graph per batch size. CPU: Inductor's C++ wrapper calls the generated kernels from C++ (less
    Python per step), and Welford variance in every LayerNorm at every batch size: by default Inductor uses it
    for one row and a two-pass sum for more, which round differently, so a seeded story would change when a
    second user joined (bench/batching.py checks it). CUDA: the default mode; CUDA graphs would need the cache
    at fixed addresses."""
    options = {"cpp_wrapper": True, "cpp.use_two_step_variance_threshold": 0} if device.type == "cpu" else None
    return torch.compile(fn, fullgraph=True, dynamic=False, options=options)
