"""Reduced-precision copies of a model for serving: bf16 weights, or int8 weights.

int8 (the CPU default): each Linear in the blocks keeps int8 weights with one bf16 scale per output
channel and computes in bf16 (`torch._weight_int8pack_mm`); the output head, untied from the embedding
as its own copy, uses PyTorch's dynamic int8 kernel (fbgemm), the fastest for its 50k x 384 shape here.
At 19 MB the int8 head fits in cache; in fp32 (77 MB) it does not, and it dominates decoding.
"""
from __future__ import annotations

import copy
import logging
import warnings

import torch
from torch import nn

from tinygpt.checkpoint import unwrap
from tinygpt.model import GPT

log = logging.getLogger(__name__)
PRECISIONS = ("fp32", "bf16", "int8")
DEFAULT_CPU_PRECISION = "int8"  # fastest here at >= 95% top-1 agreement (bench/generate.py)


class Int8Linear(nn.Module):
    """y = x @ (w_int8 * scale).T + b, weight-only int8 with per-output-channel scales, bf16 compute."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0
        self.register_buffer("weight_int8", (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8))
        self.register_buffer("scales", scale.to(dtype))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(dtype))
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch._weight_int8pack_mm(x.reshape(-1, self.in_features), self.weight_int8, self.scales)
        y = y.view(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias


class Int8Head(nn.Module):
    """The output head as fbgemm dynamic int8 (fp32 in, fp32 logits out)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        linear = nn.Linear(weight.size(1), weight.size(0), bias=False)
        linear.weight = nn.Parameter(weight.detach().float().clone())
        with warnings.catch_warnings():  # torch.ao's quantized-tensor deprecation notice; the kernel stays
            warnings.simplefilter("ignore", UserWarning)
            quantized = torch.ao.quantization.quantize_dynamic(nn.Sequential(linear), {nn.Linear},
                                                               dtype=torch.qint8)
        self._packed_params = quantized[0]._packed_params

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x.float(), self._packed_params._packed_params, True)


def default_precision(device: torch.device) -> str:
    """int8 on CPUs (fastest at fp32 quality, bench/generate.py), bf16 on CUDA, fp32 elsewhere."""
    return {"cpu": DEFAULT_CPU_PRECISION, "cuda": "bf16"}.get(device.type, "fp32")


def for_serving(model: nn.Module, precision: str = "fp32") -> GPT:
    """A converted copy of `model` in eval mode for inference ('fp32', 'bf16' or 'int8'); `model` is untouched."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    gpt = copy.deepcopy(unwrap(model)).eval()
    if precision == "bf16":
        return gpt.to(torch.bfloat16)
    if precision == "int8":
        if gpt.lm_head.weight.device.type != "cpu":
            raise ValueError("int8 serving uses CPU kernels; use bf16 on GPUs")
        head = Int8Head(gpt.lm_head.weight)  # its own copy: the embedding table stays as it was
        gpt = gpt.to(torch.bfloat16)
        for block in gpt.transformer.h:
            for parent, name in ((block.attn, "c_attn"), (block.attn, "c_proj"), (block.mlp, "c_fc"),
                                 (block.mlp, "c_proj")):
                setattr(parent, name, Int8Linear(getattr(parent, name)))
        gpt.lm_head = head
    return gpt
