"""A lean single-token decode step for CPU serving.

`GPT.forward` is written to be read; for one token on a 2-core CPU, its Python (module calls, hooks,
views) costs more than its arithmetic. `DecodeStep` gathers the weights once into flat lists and runs the
same math in `blocks_step`, compiled with TorchScript, whose interpreter dispatches ops at a fraction of
Python's cost (measured: the 6 blocks in 1.07 ms instead of 1.95 ms). Tests check it against the full
forward in every precision.
"""
from __future__ import annotations

import logging
import warnings
from functools import lru_cache
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from tinygpt.kv_cache import KVCache
from tinygpt.model import GPT

log = logging.getLogger(__name__)


def linear_fn(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """A plain function computing `module(x)` for nn.Linear or a dynamically quantized int8 Linear
    (skipping the module call); other modules (tinygpt.quantize.Int4Head) are called as they are."""
    packed = getattr(module, "_packed_params", None)
    if packed is not None:  # fbgemm dynamic int8: call the kernel directly
        params, op = packed._packed_params, torch.ops.quantized.linear_dynamic
        return lambda x: op(x.float(), params, True)
    if isinstance(module, nn.Linear):
        weight, bias = module.weight, module.bias
        return lambda x: F.linear(x, weight, bias)
    return module


def _linear(x: torch.Tensor, w: torch.Tensor, s: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> torch.Tensor:
    """nn.Linear, or weight-only int8 (tinygpt.quantize.Int8Linear) when per-channel scales `s` are given."""
    if s is None:
        return F.linear(x, w, b)
    y = torch._weight_int8pack_mm(x, w, s)
    return y if b is None else y + b


def blocks_step(x: torch.Tensor, ln: List[Optional[torch.Tensor]], w: List[torch.Tensor],
                s: List[Optional[torch.Tensor]], b: List[Optional[torch.Tensor]], K: List[torch.Tensor],
                V: List[torch.Tensor], pos: int, n_head: int) -> torch.Tensor:
    """All transformer blocks for one token x (1, C) at `pos`, writing its keys/values into K, V."""
    C = x.size(1)
    hs = C // n_head
    for i in range(len(K)):
        h = F.layer_norm(x, [C], ln[4 * i], ln[4 * i + 1])
        q, k, v = _linear(h, w[4 * i], s[4 * i], b[4 * i]).view(3, 1, n_head, 1, hs).unbind(0)
        K[i][:, :, pos:pos + 1] = k
        V[i][:, :, pos:pos + 1] = v
        y = F.scaled_dot_product_attention(q, K[i][:, :, :pos + 1], V[i][:, :, :pos + 1])  # (1, nh, 1, hs)
        x = x + _linear(y.view(1, C), w[4 * i + 1], s[4 * i + 1], b[4 * i + 1])
        h = F.layer_norm(x, [C], ln[4 * i + 2], ln[4 * i + 3])
        h = F.gelu(_linear(h, w[4 * i + 2], s[4 * i + 2], b[4 * i + 2]), approximate="tanh")
        x = x + _linear(h, w[4 * i + 3], s[4 * i + 3], b[4 * i + 3])
    return x


@lru_cache(maxsize=1)
def compiled_blocks_step() -> Callable:
    """`blocks_step` under TorchScript, or the plain function where scripting is unavailable.

    torch.jit.script is deprecated in favour of torch.compile, but for this per-token loop on a CPU
    torch.compile measured no faster than Python (bench/generate.py --compile), while TorchScript's
    interpreter halves the dispatch cost. If a future PyTorch drops it, decoding falls back to Python.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.script(blocks_step)
    except Exception as e:  # never let TorchScript stop generation
        log.warning("TorchScript unavailable (%s); decoding with plain Python", e)
        return blocks_step


class DecodeStep:
    """`step(token, pos) -> logits (vocab,)` for one stream, reading and writing its KV cache."""

    def __init__(self, model: GPT, cache: list[KVCache], scripted: bool = True) -> None:
        t = model.transformer
        self.n_head, self.n_embd = model.config.n_head, model.config.n_embd
        self.wte, self.wpe = t.wte.weight, t.wpe.weight
        self.ln: list = []
        self.w: list = []
        self.s: list = []
        self.b: list = []
        for block in t.h:
            self.ln += [block.ln_1.weight, block.ln_1.bias, block.ln_2.weight, block.ln_2.bias]
            for lin in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
                int8 = hasattr(lin, "weight_int8")
                self.w.append(lin.weight_int8 if int8 else lin.weight)
                self.s.append(lin.scales if int8 else None)
                self.b.append(lin.bias)
        self.K, self.V = [kv.k for kv in cache], [kv.v for kv in cache]  # (1, nh, block_size, hs) each
        self.ln_f = (t.ln_f.weight, t.ln_f.bias)
        self.head = linear_fn(model.lm_head)
        self.row_of = model.row_of.tolist() if model.config.kept_tokens else None
        self.vocab_logits = model.vocab_logits
        self.blocks = compiled_blocks_step() if scripted else blocks_step

    @torch.no_grad()  # not inference_mode: torch.compile of this step cannot trace inference tensors
    def __call__(self, token: int, pos: int) -> torch.Tensor:
        row = token if self.row_of is None else self.row_of[token]
        x = (self.wte[row].to(self.wpe.dtype) + self.wpe[pos]).view(1, self.n_embd)
        x = self.blocks(x, self.ln, self.w, self.s, self.b, self.K, self.V, pos, self.n_head)
        return self.vocab_logits(self.head(F.layer_norm(x, (self.n_embd,), *self.ln_f))[0].float())  # (vocab,)
