"""The output head and the cross-entropy loss, computed together in chunks of positions.

A plain `lm_head(x)` then `cross_entropy` materialises (B*T, rows) logits several times over: in the autocast
dtype, in fp32, the saved softmax and its gradient. For the reference model at batch 64 x 128 and 50,257 rows
that is 8192 x 50257 floats (1.6 GB) per copy. Here each chunk's logits are made, turned into the loss and,
when training, straight into the gradients of the hidden states and of the head weight, then dropped: the
backward pass only scales those stored gradients. The arithmetic is the same three matmuls as autograd's; the
memory is one chunk of logits.
"""
from __future__ import annotations

import torch
from torch import nn

CHUNK_ELEMENTS = 1 << 24  # logits per chunk (64 MB in fp32): big enough for efficient matmuls


def _compute_dtype(h: torch.Tensor) -> torch.dtype:
    """The autocast dtype where autocast is on (what nn.Linear would use), else h's own dtype."""
    device = h.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else h.dtype


def _chunks(h: torch.Tensor, head: nn.Module, targets: torch.Tensor, dtype: torch.dtype,
            need_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(summed loss, d(sum)/dh, d(sum)/dweight) over all positions; targets < 0 are ignored."""
    weight = head.weight if isinstance(head, nn.Linear) else None  # else a serving copy (tinygpt.kernels.quantize)
    n, rows = h.size(0), head.out_features
    chunk = max(1, CHUNK_ELEMENTS // rows)
    w = weight.to(dtype) if weight is not None else None
    total = torch.zeros((), dtype=torch.float32, device=h.device)
    grad_h = torch.empty_like(h) if need_grad else None
    grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=h.device) if need_grad else None
    for s in range(0, n, chunk):
        hc, tc = h[s:s + chunk].to(dtype), targets[s:s + chunk]
        logits = (hc @ w.t() if w is not None else head(hc)).float()  # (chunk, rows)
        lse = logits.logsumexp(-1)
        valid = tc >= 0
        picked = logits.gather(1, tc.clamp(min=0)[:, None]).squeeze(1)
        total += ((lse - picked) * valid).sum()
        if need_grad:  # d(-log softmax[t]) / dlogits = softmax - onehot(t), zero on ignored rows
            g = logits.sub_(lse[:, None]).exp_()
            g[torch.arange(len(tc), device=g.device), tc.clamp(min=0)] -= 1.0
            g = (g * valid[:, None]).to(dtype)
            grad_h[s:s + chunk] = (g @ w).to(h.dtype)
            grad_w += (g.t() @ hc).float()
    return total, grad_h, grad_w


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, extra, dtype, head):
        total, grad_h, grad_w = _chunks(h, head, targets, dtype, need_grad=True)
        count = (targets >= 0).sum().clamp(min=1)
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype), count)
        return (total + extra) / count

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, count = ctx.saved_tensors
        scale = grad_out / count
        return grad_h * scale.to(grad_h.dtype), grad_w * scale.to(grad_w.dtype), None, None, None, None


def linear_cross_entropy(h: torch.Tensor, head: nn.Module, targets: torch.Tensor,
                         extra: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of `targets` (N,) under logits `head(h)`, without holding all the logits.

    h (N, C) hidden states, head the output layer (an nn.Linear, or for inference only a quantized copy
    with `out_features`), targets (N,) row indices (-1 = ignore).
    `extra` is a constant added to the summed loss before the mean (a cost outside the head's rows).
    """
    extra = torch.zeros((), device=h.device) if extra is None else extra.float()
    dtype = _compute_dtype(h)
    with torch.autocast(h.device.type, enabled=False):  # the dtype is chosen above, explicitly
        if torch.is_grad_enabled() and isinstance(head, nn.Linear) and (h.requires_grad or head.weight.requires_grad):
            return _LinearCrossEntropy.apply(h, head.weight, targets, extra, dtype, head)
        total, _, _ = _chunks(h, head, targets, dtype, need_grad=False)
        return (total + extra) / (targets >= 0).sum().clamp(min=1)
