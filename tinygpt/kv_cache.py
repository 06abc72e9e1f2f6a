"""A static (preallocated) key/value cache for incremental decoding, one per attention layer."""
from __future__ import annotations

import torch
from torch import nn


class KVCache(nn.Module):
    """Keys and values of the tokens seen so far, written in place into fixed-size buffers.

    Preallocating `max_len` slots means decoding never re-allocates or concatenates per token.
    """

    def __init__(self, batch_size: int, n_head: int, max_len: int, head_dim: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        shape = (batch_size, n_head, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, device=device, dtype=dtype), persistent=False)

    def update(self, pos: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nh, T, hs) at positions pos..pos+T; return all keys and values up to there."""
        end = pos + k.size(2)
        self.k[:, :, pos:end] = k
        self.v[:, :, pos:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]
