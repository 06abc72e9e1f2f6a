"""The one-pass decode step (decode.cpp, `torch.ops.tinygpt.decode_step`) for a serving copy: which copies it can
run, and the serving copy's own tensors packed in the order the kernel reads them (no weight is copied).

A decode step through `GPT.forward` is ~40 operations, each a call of its own with a fork and a join of the
threads; this runs the same step (embedding, blocks, final LayerNorm, head) in one parallel region and returns
the head's best rows per stream instead of its logits. It runs copies made by `quantize.for_serving` in int8 or
int4 with our kernels on a CPU without AMX tiles (their layout is another: such CPUs, and every other copy, keep
the compiled step). tinygpt.inference.engine chooses it and logs which step runs; tests/test_one_pass.py checks it
against GPT.forward.
"""
from __future__ import annotations

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
    return torch.empty(0, dtype=dtype) if t is None else t


def _linear(layer: nn.Module) -> list[torch.Tensor]:
    if isinstance(layer, Int4Linear):
        return [layer.codes, layer.scales]
    return [layer.packed, layer.scales, _or_empty(layer.bias)]


def pack(model: GPT, id_of_row: torch.Tensor | None = None, shared_ids: torch.Tensor | None = None
         ) -> list[torch.Tensor]:
    """The serving copy's tensors in decode.cpp's order: wte, wpe; with kept tokens, row_of, each row's id and the
    ids that share the last row, ascending (tinygpt.inference.vocab.VocabTopK's; else empty); per
    block ln_1 (weight, bias), c_attn and attn.c_proj (packed, scales, bias), ln_2, c_fc, mlp.c_proj; ln_f; the
    head (int4: codes, scales; int8: packed, scales). A missing bias is an empty tensor. Views, not copies."""
    t, none = model.transformer, torch.empty(0, dtype=torch.long)
    kept = [model.row_of, id_of_row, shared_ids] if model.config.kept_tokens else [none.int(), none, none]
    tensors = [t.wte.weight.detach(), t.wpe.weight.detach(), *kept]
    for b in t.h:
        tensors += [b.ln_1.weight.detach(), _or_empty(b.ln_1.bias), *_linear(b.attn.c_attn), *_linear(b.attn.c_proj),
                    b.ln_2.weight.detach(), _or_empty(b.ln_2.bias), *_linear(b.mlp.c_fc), *_linear(b.mlp.c_proj)]
    tensors += [t.ln_f.weight.detach(), _or_empty(t.ln_f.bias), *_linear(model.lm_head)[:2]]
    return [x.detach().contiguous() for x in tensors]


class OnePassStep:
    """`step(idx, cache, settings, u, seen)`: one decode step of a serving copy (`unavailable(model)` is None),
    sampled: for idx (B, 1) and a cache of B rows (advanced by one, as GPT.forward advances it), with each
    stream's settings (B, 5), draw u (B,) and story so far `seen` (B, vocab) bool (or None), the packed rows of
    tinygpt.inference.sampling.pick_top over the k best (B, 2 + 2 * alternatives) float64. `ranked` holds the last step's k best ids per stream
    (values, ids: (B, k), descending) and their logsumexp (B,), which it sampled from."""

    def __init__(self, model: GPT, k: int, alternatives: int, id_of_row: torch.Tensor | None = None,
                 shared_ids: torch.Tensor | None = None) -> None:
        reason = unavailable(model)
        if reason is not None:
            raise ValueError(f"the one-pass step cannot run this model: {reason}")
        if model.config.kept_tokens and (id_of_row is None or shared_ids is None):
            raise ValueError("a model with kept tokens needs each row's id and the shared row's ids (VocabTopK's)")
        self.weights, self.k, self.alternatives = pack(model, id_of_row, shared_ids), k, alternatives
        self.n_head = model.config.n_head
        self.offset = model.shared_row_cost()  # ranks the shared row as one of its ids (0 without one)
        self.ranked: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._none = torch.empty(0, dtype=torch.bool)

    def __call__(self, idx: torch.Tensor, cache: KVCache, settings: torch.Tensor, u: torch.Tensor,
                 seen: torch.Tensor | None) -> torch.Tensor:
        packed, *self.ranked = torch.ops.tinygpt.decode_step(
            idx.view(-1), cache.pos, self.weights, cache.tensors(), self.n_head, self.k, self.offset, settings, u,
            self._none if seen is None else seen, self.alternatives)
        return packed
