"""Reduced-precision copies of a model for serving: bf16, int8, or int8 with an int4 output head.

int8, where our kernels build (x86-64 Linux with AVX2: tinygpt.kernels): every Linear, the head
included, keeps int8 weights with one fp32 scale per output channel, and each row of its input is quantized to
int8 as it arrives, so the dot products run on integer multiplies; everything else stays fp32. Elsewhere int8 is
weight-only: int8 weights, bf16 compute (`torch._weight_int8pack_mm`), the model in bf16. int4: the same blocks,
and the head in 4 bits with a scale and an offset per group of weights. Each layer is a plain module with a plain
`forward` that the model calls like any nn.Linear (and torch.compile traces like one); only this module knows
their layout. With our kernels, attention over the KV cache runs in one too (KernelAttention, over an fp16
cache). The head becomes a copy of its own, untied from the embedding: decoding a token reads every weight once,
and for a full-vocabulary model the head is most of them.
"""
from __future__ import annotations

import copy
import functools
import logging

import torch
from torch import nn

from tinygpt import kernels
from tinygpt.model.checkpoint import int8_rows, unwrap
from tinygpt.model.gpt import GPT, CachedAttention, GPTConfig

log = logging.getLogger(__name__)
PRECISIONS = ("fp32", "bf16", "fp16", "int8", "int4")


class _KernelLinear(nn.Module):
    """What our kernels' layers share: output rows padded to blocks of 4 (the kernels read 4 rows at a time),
    inputs read WIDTH columns at a time, fp32 in and out. The kernels write only the real outputs: a slice of a
    padded output would be copied before the next op."""

    WIDTH = 32

    def _pad_rows(self, weight: torch.Tensor, multiple: int = 4) -> torch.Tensor:
        """(n, k) weight -> (rows, k) fp32 with zero rows up to a multiple; records the layer's shape."""
        n, k = weight.shape
        padded = torch.zeros(-(-n // multiple) * multiple, k)
        padded[:n] = weight.detach().float()
        self.in_features, self.out_features = k, n
        return padded

    @classmethod
    def fits(cls, n_embd: int) -> bool:
        """Whether a model this wide can use it (its matrices are n_embd or 4 * n_embd wide)."""
        return n_embd % cls.WIDTH == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._matmul(x.reshape(-1, self.in_features).float().contiguous())
        return y.view(*x.shape[:-1], self.out_features)


class Int8Linear(_KernelLinear):
    """y = x @ (w_int8 * scale).T + b with int8 weights (a scale per output channel) and each row of x quantized
    to int8 on the fly (one scale per row): our kernel, `torch.ops.tinygpt.int8_linear`, or on a CPU with AMX
    `int8_linear_amx` (the same bits, weights laid out for its tiles). Rows are independent, so a stream's
    numbers do not depend on what else is in its batch."""

    def __init__(self, linear: nn.Linear, amx: bool | None = None) -> None:
        super().__init__()
        # the tiles take 64 columns at a time; a narrower multiple of 32 gets the other kernel (the same bits)
        self.amx = (kernels.amx() if amx is None else amx) and linear.in_features % 64 == 0
        w = self._pad_rows(linear.weight, 16 if self.amx else 4)
        (rows, k), n = w.shape, self.out_features
        q, scale = int8_rows(w)
        if self.amx:  # each tile of 16 rows, 4 columns at a time: the rows' 4 weights side by side (amx.cpp)
            packed = q.view(rows // 16, 16, k // 4, 4).transpose(1, 2)
        else:  # each block of 4 rows, 32 columns at a time, as one run of memory (matmul.cpp)
            packed = q.view(rows // 4, 4, k // 32, 32).transpose(1, 2)
        self.register_buffer("packed", packed.contiguous().view(rows, k))
        self.register_buffer("scales", scale)
        bias = None if linear.bias is None else torch.cat([linear.bias.detach().float(), torch.zeros(rows - n)])
        self.register_buffer("bias", bias)

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        matmul = torch.ops.tinygpt.int8_linear_amx if self.amx else torch.ops.tinygpt.int8_linear
        return matmul(x, self.packed, self.scales, self.bias, self.out_features)


class WeightOnlyInt8Linear(nn.Module):
    """y = x @ (w_int8 * scale).T + b, weight-only int8 with per-output-channel scales, bf16 compute."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        q, scale = int8_rows(linear.weight, scale_dtype=dtype)
        self.register_buffer("weight_int8", q)
        self.register_buffer("scales", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(dtype))
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # contiguous: the kernels refuse strided rows (the last position of a batched prefill is one)
        y = torch._weight_int8pack_mm(x.reshape(-1, self.in_features).contiguous(), self.weight_int8, self.scales)
        y = y.view(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias


class Int4Head(nn.Module):
    """The output head in 4 bits, asymmetric per group of GROUP input weights, bf16 compute, fp32 logits."""

    GROUP = 32

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        n, k = weight.shape
        rows = (n + 63) // 64 * 64  # the packing wants whole tiles of rows
        w = torch.zeros(rows, k)
        w[:n] = weight.detach().float()
        q, scale, zero = quantize_int4(w.view(rows, k // self.GROUP, self.GROUP))
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.view(rows, k), 1))
        self.register_buffer("scales_zeros", torch.cat([scale, zero], -1).transpose(0, 1).contiguous().bfloat16())
        self.in_features, self.out_features = k, n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.reshape(-1, self.in_features).bfloat16().contiguous(),
                                                       self.packed, self.GROUP, self.scales_zeros)
        return y[:, :self.out_features].float().view(*x.shape[:-1], self.out_features)


class Int4Linear(_KernelLinear):
    """y = x @ w.T with 4-bit weights, a scale and an offset per group of 64 (chosen as for Int4Head), and each
    row of x quantized to int8 on the fly: our kernel, `torch.ops.tinygpt.int4_linear`. Groups of 64, not
    Int4Head's 32: one scale per 32-byte load halves the kernel's float work, for slightly coarser weights."""

    WIDTH = 64  # a group: one byte per pair of codes, 32 apart

    def __init__(self, weight: torch.Tensor, amx: bool | None = None) -> None:
        super().__init__()
        self.amx = kernels.amx() if amx is None else amx
        w = self._pad_rows(weight, 16 if self.amx else 4)
        rows, k = w.shape
        groups = k // self.WIDTH
        q, scale, zero = quantize_int4(w.view(rows, groups, self.WIDTH))
        offset = zero - 8 * scale  # codes run 0..15: w = code * scale + offset
        if self.amx:  # per tile of 16 rows and group: its 16 runs of the 16 rows' 4 codes, two runs to a byte
            runs = q.view(rows // 16, 16, groups, 16, 4).permute(0, 2, 3, 1, 4).to(torch.uint8)
            codes = runs[:, :, :8] | runs[:, :, 8:] << 4
            pairs = torch.cat([scale, offset], -1).view(rows // 16, 16, groups, 2).permute(0, 2, 3, 1)
        else:  # per block of 4 rows and group: each row's 32 bytes, low nibbles then high (matmul.cpp)
            nibbles = q.view(rows, groups, 2, 32).to(torch.uint8)
            codes = nibbles[:, :, 0] | nibbles[:, :, 1] << 4
            codes = codes.view(rows // 4, 4, groups, 32).transpose(1, 2)
            pairs = torch.cat([scale, offset], -1).view(rows // 4, 4, groups, 2).permute(0, 2, 3, 1)  # 4 scales, 4 offsets
        self.register_buffer("codes", codes.reshape(rows, k // 2))
        self.register_buffer("scales", pairs.reshape(-1).half())

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        matmul = torch.ops.tinygpt.int4_linear_amx if self.amx else torch.ops.tinygpt.int4_linear
        return matmul(x, self.codes, self.scales, self.out_features)


class KernelAttention(CachedAttention):
    """CachedAttention's math in our kernel (`torch.ops.tinygpt.cache_attention`), for fp32 queries: each query
    reads only the slots up to its position (the last one its mask allows), where the fused math backend reads
    all of them. The cache it reads is fp16 (see `cache_dtype`): with many streams those reads come from memory,
    and fp16 halves them."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        positions = mask[:, 0].sum(-1) - 1  # (B, T): the mask allows slots 0..position
        return kernels.cache_attention(q, k, v, positions)


def cache_dtype(model: GPT) -> torch.dtype | None:
    """The dtype a serving copy's KV cache is kept in: fp16 where our attention kernel reads it, else None
    (the model's own)."""
    blocks = model.transformer.h
    return torch.float16 if len(blocks) and isinstance(blocks[0].attn.cached, KernelAttention) else None


def quantize_int4(groups: torch.Tensor, shrinks: tuple[float, ...] = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weights (..., G) -> 4-bit codes (int32), and a bf16-exact scale and zero per group, such that the kernel's
    (q - 8) * scale + zero approximates them. Per group, the range is clipped by whichever of `shrinks` gives
    the least squared error (clipping a rare outlier buys finer steps for the rest), and the codes are rounded
    against the bf16 scale and zero the kernel will use."""
    lo, hi = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
    center, half = (hi + lo) / 2, (hi - lo) / 2
    best = None
    for shrink in shrinks:
        scale = (2 * half * shrink / 15).clamp(min=1e-8).bfloat16().float()
        zero = (center - half * shrink + 8 * scale).bfloat16().float()
        q = ((groups - zero) / scale + 8).round().clamp(0, 15)
        err = ((q - 8) * scale + zero - groups).pow(2).sum(-1, keepdim=True)
        if best is None:
            best = [q, scale, zero, err]
        else:
            better = err < best[3]
            best = [torch.where(better, new, old) for new, old in zip((q, scale, zero, err), best)]
    q, scale, zero, _ = best
    return q.to(torch.int32), scale, zero


def int4_available(n_embd: int) -> bool:
    """The int4 head needs PyTorch's CPU int4 kernel and a width that splits into groups; else int8 is used."""
    ok = n_embd % Int4Head.GROUP == 0 and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")
    if not ok:
        log.warning("int4 head unavailable (n_embd %d, torch %s); using an int8 head", n_embd, torch.__version__)
    return ok


def default_precision(device: torch.device, config: GPTConfig | None = None) -> str:
    """On CPUs the fastest that keeps quality for this model: int4 (int8 blocks, an int4 head) for a head over the
    whole vocabulary, whose weights then fit a CPU's cache far better; int8 for a small head over the data's
    tokens (`kept_tokens`), where 4 bits were no faster and cost more loss. On CUDA the GPU's native 16-bit
    type (bf16 from compute capability 8.0, else fp16); fp32 elsewhere (MPS). bench/generate.py measures them."""
    if device.type == "cuda":
        from tinygpt.device import cuda_half_dtype

        return "bf16" if cuda_half_dtype(device)[0] == torch.bfloat16 else "fp16"
    if device.type != "cpu":
        return "fp32"
    return "int8" if config is not None and config.kept_tokens else "int4"


def servable_precision(requested: str | None, device: torch.device, config: GPTConfig | None = None
                       ) -> tuple[str, str | None]:
    """The precision to serve a model (its `config`) in on `device`: `requested` if the device runs it, else the
    best it can, with the reason (None when `requested` is used as asked). Raises ValueError for a name that is
    no precision."""
    if requested is None:
        return default_precision(device, config), None
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    best = default_precision(device, config)
    if requested in ("int8", "int4") and device.type != "cpu":
        return best, f"{requested} uses CPU kernels; serving {best} on {device.type} instead"
    if requested == "bf16" and device.type == "cuda" and best == "fp16":
        return best, "this GPU has no native bf16; serving fp16 instead"
    return requested, None


INT8_WIDTH_MULTIPLE = 16  # torch._weight_int8pack_mm crashes (segfault, torch 2.13) for other input widths


def int8_or_bf16(linear: nn.Linear) -> nn.Module:
    """WeightOnlyInt8Linear where torch's kernel handles the input width; else a bf16 copy, with a warning."""
    if linear.in_features % INT8_WIDTH_MULTIPLE == 0:
        return WeightOnlyInt8Linear(linear)
    log.warning("int8 kernel needs input widths that are multiples of %d; a %d-wide layer stays bf16",
                INT8_WIDTH_MULTIPLE, linear.in_features)
    bf16 = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None, dtype=torch.bfloat16)
    with torch.no_grad():
        bf16.weight.copy_(linear.weight)
        if linear.bias is not None:
            bf16.bias.copy_(linear.bias)
    return bf16


def for_serving(model: nn.Module, precision: str = "fp32", build_kernels: bool = True, amx: bool | None = None
                ) -> GPT:
    """A converted copy of `model` in eval mode for inference ('fp32', 'bf16', 'fp16', 'int8' or 'int4'); `model`
    is untouched. int8/int4 need a CPU model (servable_precision picks what a device can run), and use our
    kernels where they load (built first if need be, unless not `build_kernels`), else PyTorch's; `amx`: lay
    their weights out for AMX tiles (default: where the CPU has them)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    gpt = copy.deepcopy(unwrap(model)).eval()
    if precision in ("bf16", "fp16"):
        return gpt.to(torch.bfloat16 if precision == "bf16" else torch.float16)
    if precision in ("int8", "int4"):
        if gpt.lm_head.weight.device.type != "cpu":
            raise ValueError(f"{precision} serving uses CPU kernels; use bf16 on GPUs")
        ours = Int8Linear.fits(gpt.config.n_embd) and kernels.load(build=build_kernels)
        layer = functools.partial(Int8Linear, amx=amx) if ours else int8_or_bf16
        # the head as its own copy: the embedding table stays as it was
        if precision == "int4" and ours and Int4Linear.fits(gpt.config.n_embd):
            head = Int4Linear(gpt.lm_head.weight, amx=amx)
        elif precision == "int4" and int4_available(gpt.config.n_embd):
            head = Int4Head(gpt.lm_head.weight)
        else:
            head = layer(gpt.lm_head)
        if not ours:
            gpt = gpt.to(torch.bfloat16)  # torch's int8 kernel computes in bf16; ours takes fp32
        attention = ours and (gpt.config.n_embd // gpt.config.n_head) % 8 == 0  # the kernel's head size rule
        for block in gpt.transformer.h:
            for parent, name in ((block.attn, "c_attn"), (block.attn, "c_proj"), (block.mlp, "c_fc"),
                                 (block.mlp, "c_proj")):
                setattr(parent, name, layer(getattr(parent, name)))
            if attention:
                block.attn.cached = KernelAttention()
        gpt.lm_head = head
    return gpt
