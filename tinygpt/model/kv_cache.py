"""A static (preallocated) key/value cache for incremental decoding: every layer's keys and values for a batch
of streams, and each stream's position, which the cache advances itself."""
from __future__ import annotations

import torch
from torch import nn


class KVCache(nn.Module):
    """Keys and values of the tokens seen so far, written in place into fixed-size buffers.

    Preallocating `max_len` slots means decoding never re-allocates or concatenates per token, and attention
    always runs over all `max_len` slots with a mask: every step has the same shapes, so a compiled step
    (torch.compile, CUDA graphs) is built once. `pos` holds each stream's next position as a tensor, so
    streams at different positions share a batch, and the step never reads it back to the host.
    `rows(start, n)` is a cache over some of the batch rows that shares this one's memory: a prompt is
    prefilled into one row, and a step over the first n rows runs at batch size n.
    """

    def __init__(self, n_layer: int, batch_size: int, n_head: int, max_len: int, head_dim: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        shape = (batch_size, n_head, max_len, head_dim)
        self.layers = nn.ModuleList(_LayerKV(torch.zeros(shape, device=device, dtype=dtype),
                                             torch.zeros(shape, device=device, dtype=dtype)) for _ in range(n_layer))
        self.register_buffer("pos", torch.zeros(batch_size, device=device, dtype=torch.long), persistent=False)
        self.register_buffer("slots", torch.arange(max_len, device=device), persistent=False)
        self.register_buffer("rows_", torch.arange(batch_size, device=device)[:, None], persistent=False)
        self._views: dict[int, KVCache] = {}  # n -> rows(0, n)
        self._tensors: list[torch.Tensor] | None = None  # tensors(), once asked

    @property
    def batch_size(self) -> int:
        return self.pos.size(0)

    def rows(self, start: int, n: int) -> KVCache:
        """Rows start..start+n-1 as a cache of batch size n, sharing this cache's memory (writes show in both)."""
        if start == 0 and n == self.batch_size:
            return self
        if start == 0 and n in self._views:  # made once: each step asks for one of a few such views
            return self._views[n]
        view = KVCache(0, 0, 1, 0, 1, self.pos.device)  # empty, then given views of our buffers
        view.layers = nn.ModuleList(_LayerKV(kv.k[start:start + n], kv.v[start:start + n]) for kv in self.layers)
        view.pos, view.slots, view.rows_ = self.pos[start:start + n], self.slots, self.rows_[:n]
        if start == 0:
            self._views[n] = view
        return view

    def move_row(self, src: int, dst: int) -> None:
        """Copy stream `src` (its keys, values and position) into row `dst`; `src` is then free (`free_row`)."""
        for kv in self.layers:
            kv.k[dst], kv.v[dst] = kv.k[src], kv.v[src]
        self.pos[dst] = self.pos[src]
        self.free_row(src)

    def free_row(self, row: int) -> None:
        """Forget row `row`'s stream. Its position goes back to 0: a free row may still run in a padded batch,
        and a stream that left at the context's end would otherwise take it past the last slot."""
        self.pos[row] = 0

    def positions(self, T: int) -> torch.Tensor:
        """(B, T) positions of the next T tokens of each stream."""
        return self.pos[:, None] + self.slots[:T]

    def mask(self, positions: torch.Tensor) -> torch.Tensor:
        """(B, 1, T, max_len) True where a query at `positions` may attend: slots at or before its own."""
        return (self.slots <= positions[:, :, None])[:, None]

    def update(self, layer: int, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nh, T, hs) at `positions` (B, T), in the cache's dtype; return the layer's keys and values
        (B, nh, max_len, hs)."""
        kv = self.layers[layer]
        kv.k[self.rows_, :, positions] = k.transpose(1, 2).to(kv.k.dtype)  # indexed as (B, T, nh, hs)
        kv.v[self.rows_, :, positions] = v.transpose(1, 2).to(kv.v.dtype)
        return kv.k, kv.v

    def advance(self, T: int) -> None:
        self.pos += T

    def tensors(self) -> list[torch.Tensor]:
        """Every layer's keys and values, [k0, v0, k1, v1, ...]: for a kernel that takes the whole cache in one
        call (tinygpt.kernels.one_pass), listed once per cache."""
        if self._tensors is None:
            self._tensors = [t for kv in self.layers for t in (kv.k, kv.v)]
        return self._tensors

    def reset(self, pos: int = 0) -> None:
        """Forget what is cached: the next token is written at `pos` (earlier slots are kept as they are)."""
        self.pos.fill_(pos)


class _LayerKV(nn.Module):
    """One layer's buffers (separate tensors, so writing one layer's slots never touches another's)."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("k", k, persistent=False)
        self.register_buffer("v", v, persistent=False)
