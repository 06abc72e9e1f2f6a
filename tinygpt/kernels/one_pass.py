"""The one-pass decode step (decode.cpp, `torch.ops.tinygpt.decode_step`) for a serving copy: which copies it can
run, and the plan the kernel reads: the addresses of the serving copy's own tensors (no weight is copied),
checked here once.

A decode step through `GPT.forward` is ~40 operations, each a call of its own with a fork and a join of the
threads; this runs the same step (embedding, blocks, final LayerNorm, head, ranking, sampling) in one call and
one parallel region, and returns each stream's sampled token as sampling.pick_top describes it. It runs copies
made by `quantize.for_serving` in int8 or int4 with our kernels on a CPU without AMX tiles (their layout is
another: such CPUs, and every other copy, keep the compiled step). tinygpt.inference.engine chooses it and logs
which step runs; tests/test_one_pass.py checks it against GPT.forward and sampling.pick_top.
"""
from __future__ import annotations

import weakref

import torch
from torch import nn

from tinygpt import kernels
from tinygpt.kernels.quantize import Int4Linear, Int8Linear, KernelAttention
from tinygpt.model.gpt import GPT
from tinygpt.model.kv_cache import KVCache


def unavailable(model: GPT) -> str | None:
    """Why the one-pass step cannot run this serving copy, or None if it can."""
    if not (kernels.loaded() and hasattr(torch.ops.tinygpt, "decode_step")):
        return "our CPU kernels are not loaded"
    blocks = model.transformer.h
    layers = [m for b in blocks for m in (b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj)]
    if not all(type(m) is Int8Linear for m in layers) or type(model.lm_head) not in (Int8Linear, Int4Linear):
        return "the model is not an int8 or int4 serving copy on our kernels"
    if any(m.amx for m in [*layers, model.lm_head]):
        return "its layers are laid out for AMX tiles"
    if not all(isinstance(b.attn.cached, KernelAttention) for b in blocks):
        return "its attention is not our kernel's (an fp16 cache)"
    norms = [model.transformer.ln_f, *(n for b in blocks for n in (b.ln_1, b.ln_2))]
    if any(n.eps != 1e-5 or n.weight.dtype != torch.float32 for n in norms) or model.config.n_embd % 64:
        return "its LayerNorms or width are not the ones it computes (eps 1e-5, fp32, n_embd a multiple of 64)"
    if any(b.mlp.gelu.approximate != "tanh" for b in blocks):
        return "its GELU is not GPT-2's (tanh)"
    return None


def _or_empty(t: torch.Tensor | None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(0, dtype=dtype) if t is None else t.detach()


def _linear(layer: nn.Module) -> list[torch.Tensor]:
    if isinstance(layer, Int4Linear):
        return [layer.codes, layer.scales]
    return [layer.packed, layer.scales, _or_empty(layer.bias)]


def pack(model: GPT, id_of_row: torch.Tensor | None = None, shared_ids: torch.Tensor | None = None
         ) -> list[torch.Tensor]:
    """The serving copy's tensors in decode.cpp's order: wte, wpe; with kept tokens, row_of, each row's id and the
    ids that share the last row, ascending (tinygpt.inference.vocab.VocabTopK's; else empty); per block ln_1
    (weight, bias), c_attn and attn.c_proj (packed, scales, bias), ln_2, c_fc, mlp.c_proj; ln_f; the head (int4:
    codes, scales; int8: packed, scales). A missing bias is an empty tensor. The copy's own tensors, not copies."""
    t, none = model.transformer, torch.empty(0, dtype=torch.long)
    kept = [model.row_of, id_of_row, shared_ids] if model.config.kept_tokens else [none.int(), none, none]
    tensors = [t.wte.weight.detach(), t.wpe.weight.detach(), *kept]
    for b in t.h:
        tensors += [b.ln_1.weight.detach(), _or_empty(b.ln_1.bias), *_linear(b.attn.c_attn), *_linear(b.attn.c_proj),
                    b.ln_2.weight.detach(), _or_empty(b.ln_2.bias), *_linear(b.mlp.c_fc), *_linear(b.mlp.c_proj)]
    tensors += [t.ln_f.weight.detach(), _or_empty(t.ln_f.bias), *_linear(model.lm_head)[:2]]
    return tensors


def _check(t: torch.Tensor, dtype: torch.dtype, *shapes: tuple[int, ...]) -> int:
    """t's address (0 when empty and () is among `shapes`), after checking what decode.cpp will read there."""
    if t.dtype != dtype or not t.is_contiguous() or t.device.type != "cpu" or tuple(t.shape) not in shapes:
        raise ValueError(f"one_pass: a tensor is {t.dtype} {tuple(t.shape)}, expected {dtype} {shapes} contiguous")
    return t.data_ptr() if t.numel() else 0


def plan(model: GPT, tensors: list[torch.Tensor]) -> torch.Tensor:
    """decode.cpp's plan of `tensors` (pack's): sizes, then each tensor's address, every one checked here (the
    kernel reads them as given). Whoever holds the plan must hold the tensors."""
    c, f32, i8, layers = model.config, torch.float32, torch.int8, len(model.transformer.h)
    C, rows, int4 = c.n_embd, c.n_rows, isinstance(model.lm_head, Int4Linear)
    head_rows, n_shared = tensors[-2].size(0), tensors[4].numel()
    kept = ((c.vocab_size,), (rows,), (n_shared,)) if c.kept_tokens else ((0,), (0,), (0,))
    want = [(f32, (rows, C)), (f32, (c.block_size, C)), (torch.int32, kept[0]), (torch.long, kept[1]),
            (torch.long, kept[2])]
    for _ in range(layers):
        for n, k in ((3 * C, C), (C, C), (4 * C, C), (C, 4 * C)):
            norm = [(f32, (C,)), (f32, (C,), ())] if (n, k) in ((3 * C, C), (4 * C, C)) else []
            want += norm + [(i8, (n, k)), (f32, (n,)), (f32, (n,), ())]
    want += [(f32, (C,)), (f32, (C,), ())]
    want += [(torch.uint8, (head_rows, C // 2)), (torch.float16, (head_rows * C // 64 * 2,))] if int4 else \
        [(i8, (head_rows, C)), (f32, (head_rows,))]
    addresses = [_check(t, dtype, *shapes) for t, (dtype, *shapes) in zip(tensors, want, strict=True)]
    sizes = [layers, C, c.n_head, c.block_size, rows, c.vocab_size, n_shared, int(int4), head_rows]
    return torch.tensor(sizes + addresses, dtype=torch.long)


class OnePassStep:
    """`step(idx, cache, settings, u, seen)`: one decode step of a serving copy (`unavailable(model)` is None),
    sampled: for idx (B, 1) and a cache of B rows (advanced by one, as GPT.forward advances it), with each
    stream's settings (B, 5), draw u (B,) and story so far `seen` (B, vocab) bool (or None), the packed rows of
    tinygpt.inference.sampling.pick_top over the k best (B, 2 + 2 * alternatives) float64. `ranked` holds the last
    step's k best ids per stream (values, ids: (B, k), descending) and their logsumexp (B,), which it sampled
    from."""

    def __init__(self, model: GPT, k: int, alternatives: int, id_of_row: torch.Tensor | None = None,
                 shared_ids: torch.Tensor | None = None) -> None:
        reason = unavailable(model)
        if reason is not None:
            raise ValueError(f"the one-pass step cannot run this model: {reason}")
        if model.config.kept_tokens and (id_of_row is None or shared_ids is None):
            raise ValueError("a model with kept tokens needs each row's id and the shared row's ids (VocabTopK's)")
        self.tensors = pack(model, id_of_row, shared_ids)  # held: the plan has their addresses
        self.plan, self.config, self.layers = plan(model, self.tensors), model.config, len(model.transformer.h)
        self.k, self.alternatives = k, alternatives
        self.offset = model.shared_row_cost()  # ranks the shared row as one of its ids (0 without one)
        self.ranked: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._none = torch.empty(0, dtype=torch.bool)
        self._caches: weakref.WeakKeyDictionary[KVCache, torch.Tensor] = weakref.WeakKeyDictionary()

    def cache_plan(self, cache: KVCache) -> torch.Tensor:
        """[rows, then each layer's keys' and values' addresses] of `cache`, checked once per cache."""
        if cache not in self._caches:
            c = self.config
            shape = (cache.batch_size, c.n_head, c.block_size, c.n_embd // c.n_head)
            addresses = [_check(t, torch.float16, shape) for t in cache.tensors()]
            if len(addresses) != 2 * self.layers:
                raise ValueError(f"one_pass: the cache has {len(addresses) // 2} layers, the model {self.layers}")
            self._caches[cache] = torch.tensor([cache.batch_size, *addresses], dtype=torch.long)
        return self._caches[cache]

    def __call__(self, idx: torch.Tensor, cache: KVCache, settings: torch.Tensor, u: torch.Tensor,
                 seen: torch.Tensor | None, k: int | None = None) -> torch.Tensor:
        """`k`: rank only the k best (sampling.candidates_needed says how many its settings need); default all."""
        packed, *self.ranked = torch.ops.tinygpt.decode_step(
            idx.view(-1), cache.pos, self.plan, self.cache_plan(cache), k or self.k, self.offset, settings, u,
            self._none if seen is None else seen, self.alternatives)
        return packed
