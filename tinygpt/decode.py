"""A lean single-token decode step for CPU serving.

`GPT.forward` is written to be read; calling it for one token costs more in Python (module calls,
hooks, views) than in arithmetic on a 2-core CPU. `DecodeStep` gathers the weights once into plain
per-layer callables and runs the same math with about half the operations. Tests check it against the
full forward in every precision.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from tinygpt.kv_cache import KVCache
from tinygpt.model import GPT

Linear = Callable[[torch.Tensor], torch.Tensor]


def linear_fn(module: nn.Module) -> Linear:
    """A plain function computing `module(x)` for nn.Linear or a dynamically quantized int8 Linear."""
    packed = getattr(module, "_packed_params", None)
    if packed is not None:  # fbgemm dynamic int8: call the kernel directly, skipping the module
        params, op = packed._packed_params, torch.ops.quantized.linear_dynamic
        return lambda x: op(x.float(), params, True)
    if hasattr(module, "weight_int8"):  # weight-only int8 (tinygpt.quantize.Int8Linear)
        w, s, b, int8mm = module.weight_int8, module.scales, module.bias, torch._weight_int8pack_mm
        return lambda x: int8mm(x, w, s) + b
    weight, bias = module.weight, module.bias
    return lambda x: F.linear(x, weight, bias)


class DecodeStep:
    """`step(token, pos) -> logits (vocab,)` for one stream, reading and writing its KV cache."""

    def __init__(self, model: GPT, cache: list[KVCache]) -> None:
        c = model.config
        self.n_head, self.head_dim, self.n_embd = c.n_head, c.n_embd // c.n_head, c.n_embd
        t = model.transformer
        self.wte, self.wpe = t.wte.weight, t.wpe.weight
        self.dtype = self.wpe.dtype
        self.layers = [
            (b.ln_1.weight, b.ln_1.bias, linear_fn(b.attn.c_attn), linear_fn(b.attn.c_proj),
             b.ln_2.weight, b.ln_2.bias, linear_fn(b.mlp.c_fc), linear_fn(b.mlp.c_proj),
             kv.k, kv.v)  # (1, nh, block_size, hs): 4-D keeps SDPA on its fast CPU kernel
            for b, kv in zip(t.h, cache)]
        self.ln_f = (t.ln_f.weight, t.ln_f.bias)
        self.head = linear_fn(model.lm_head)

    @torch.no_grad()  # not inference_mode: torch.compile of this step cannot trace inference tensors
    def __call__(self, token: int, pos: int) -> torch.Tensor:
        nh, hs, C = self.n_head, self.head_dim, self.n_embd
        x = (self.wte[token].to(self.dtype) + self.wpe[pos]).view(1, C)
        for ln1w, ln1b, qkv, proj, ln2w, ln2b, fc, fc2, K, V in self.layers:
            q, k, v = qkv(F.layer_norm(x, (C,), ln1w, ln1b)).view(3, 1, nh, 1, hs).unbind(0)
            K[:, :, pos:pos + 1] = k
            V[:, :, pos:pos + 1] = v
            y = F.scaled_dot_product_attention(q, K[:, :, :pos + 1], V[:, :, :pos + 1])  # (1, nh, 1, hs)
            x = x + proj(y.view(1, C))
            x = x + fc2(F.gelu(fc(F.layer_norm(x, (C,), ln2w, ln2b)), approximate="tanh"))
        return self.head(F.layer_norm(x, (C,), *self.ln_f))[0].float()  # (vocab,)
