"""The GPT model: a decoder-only, pre-LayerNorm transformer in the style of GPT-2, read top to bottom.

`GPT.forward(idx, targets=None) -> (logits, loss)` trains; `GPT.forward(idx, cache=c)` with a cache from
`GPT.new_cache()` decodes incrementally: a whole prompt at once (prefill, which needs only `GPT.hidden`) or one
token per stream (a decode step), through the same modules. The cache is passed in, not held by the model, so
one model can serve many streams at once; it tracks each stream's position itself.

Token ids are always GPT-2's 50,257. A model may keep embedding/output rows for only the ids its training data
uses (`kept_tokens`, set by `train.py --data-vocab`): at small widths the full head is most of the weights and
of the compute. Every other id shares one extra row, and its probability is that row's split evenly over the
ids that share it, so the distribution over all 50,257 ids still sums to one and losses stay full-vocabulary
figures. What only serving needs (quantized layers, kernel attention, ranking the head's rows) is built from
these modules in tinygpt.inference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from tinygpt.model.kv_cache import KVCache
from tinygpt.model.loss import linear_cross_entropy


@dataclass(frozen=True)
class GPTConfig:
    """Model shape. The defaults are the reference TinyGPT model (about 30.0M parameters)."""

    vocab_size: int = 50257  # GPT-2 BPE
    block_size: int = 128  # context length
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.1
    bias: bool = True  # biases in Linear and LayerNorm, as in GPT-2
    kept_tokens: int = 0  # 0: a row per id; N: rows for N ids (the data's) plus one shared by the rest

    @property
    def n_rows(self) -> int:
        """Rows of the embedding table and the output head."""
        return self.kept_tokens + 1 if self.kept_tokens else self.vocab_size

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"GPTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0 <= self.kept_tokens < self.vocab_size:
            raise ValueError(f"kept_tokens must be in [0, vocab_size), got {self.kept_tokens}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class CachedAttention(nn.Module):
    """Decoding's attention: a few new queries (B, nh, T, hs) over a KV cache's keys and values (B, nh, max_len,
    hs), each query to the slots `mask` (B, 1, T, max_len) allows: those up to its own position. The math backend:
    with a few queries, plain matmuls (fused when compiled) beat flash attention. A module of its own so that a
    serving copy can compute the same in a kernel (tinygpt.kernels.quantize.KernelAttention)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class CausalAttention(nn.Module):
    """Training's (and a whole text's) attention: queries, keys and values (B, nh, T, hs), each query over the
    positions up to its own, by SDPA (flash where it can). A module of its own so that what it attended to can
    be looked at (tinygpt.inference.inspect hooks it and asks `causal_attention_probs`)."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = dropout

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        dropout = self.dropout if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)


def causal_attention_probs(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The weights SDPA applies to the values in CausalAttention (without dropout), by its definition:
    softmax(q kᵀ / √hs) over the positions up to each query's own, (B, nh, T, T); row t is 0 after t."""
    T = q.size(-2)
    scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, nh, T, T)
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int = 0) -> None:
        super().__init__()
        self.n_head, self.layer = config.n_head, layer  # layer: which slice of a KVCache is ours
        self.cached, self.causal = CachedAttention(), CausalAttention(config.dropout)
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, positions: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if cache is not None:  # decoding: attend to every cached slot the mask allows, this chunk's included
            k, v = cache.update(self.layer, positions, k, v)
            y = self.cached(q, k, v, mask)
        else:
            y = self.causal(q, k, v)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's GELU
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer: int = 0) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, positions: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, positions, mask)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig, kept_ids: torch.Tensor | None = None) -> None:
        """`kept_ids`: the ids that get their own rows when config.kept_tokens > 0 (a checkpoint's are loaded)."""
        super().__init__()
        self.config = config
        if config.kept_tokens:  # id -> row; the ids not kept share the last row
            ids = torch.arange(config.kept_tokens) if kept_ids is None else torch.as_tensor(kept_ids).long()
            if ids.shape != (config.kept_tokens,) or len(ids.unique()) != len(ids):
                raise ValueError(f"kept_ids must be {config.kept_tokens} distinct token ids")
            row_of = torch.full((config.vocab_size,), config.kept_tokens, dtype=torch.int32)
            row_of[ids] = torch.arange(config.kept_tokens, dtype=torch.int32)
            self.register_buffer("row_of", row_of)  # saved with the weights
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.n_rows, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.n_rows, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying, as in GPT-2
        self.apply(self._init_weights)
        # GPT-2: scale residual projections by 1/sqrt(2 * n_layer) so the residual stream stays O(1).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (the tied embedding counted once); optionally without position embeddings."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids -> embedding/head rows (the same tensor when every id has its own row)."""
        return self.row_of[idx] if self.config.kept_tokens else idx

    def shared_row_cost(self) -> float:
        """-log of the share each id not kept gets of the shared row's probability (0 without one)."""
        c = self.config
        return math.log(c.vocab_size - c.kept_tokens) if c.kept_tokens else 0.0

    def vocab_logits(self, row_logits: torch.Tensor) -> torch.Tensor:
        """(..., n_rows) head outputs -> (..., vocab_size) logits of a distribution over every token id."""
        if not self.config.kept_tokens:
            return row_logits
        shared = (self.row_of == self.config.kept_tokens).to(row_logits.dtype) * self.shared_row_cost()
        return row_logits.index_select(-1, self.row_of) - shared

    def hidden(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """idx (B, T) token ids -> the final hidden states (B, T, C) that the head reads. With a `cache` (from
        `new_cache`), idx holds each stream's next T tokens, the cache supplies the earlier ones and advances (a
        prompt's prefill needs only this). The caller keeps each stream within block_size (checking here would
        read the device)."""
        B, T = idx.size()
        if cache is None:
            if T > self.config.block_size:
                raise ValueError(f"{T} positions exceed block_size {self.config.block_size}")
            positions, mask = torch.arange(T, dtype=torch.long, device=idx.device), None
        else:
            positions = cache.positions(T)  # (B, T)
            mask = cache.mask(positions)
        x = self.transformer.drop(self.transformer.wte(self.rows(idx)) + self.transformer.wpe(positions))  # (B, T, C)
        for block in self.transformer.h:
            x = block(x, cache, positions, mask)
        if cache is not None:
            cache.advance(T)
        return self.transformer.ln_f(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, cache: KVCache | None = None
                ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """idx (B, T) token ids -> (logits (B, T, vocab), None), or (None, mean cross-entropy) with targets.

        With targets the loss is computed in chunks (tinygpt.model.loss) and the (B, T, vocab) logits are never
        built: they are most of training's memory. Targets of -1 are ignored. With a `cache` (see `hidden`),
        only the last position's logits are computed (B, 1, vocab), which skips most of the costly output head.
        """
        x = self.hidden(idx, cache)  # (B, T, C)
        if cache is not None:
            x = x[:, -1:, :]
        elif targets is not None:
            B, T, _ = x.size()
            targets = targets.reshape(-1)
            rows = torch.where(targets >= 0, self.rows(targets.clamp(min=0)), -1)
            kept = self.config.kept_tokens
            extra = (rows == kept).sum() * self.shared_row_cost() if kept else None
            return None, linear_cross_entropy(x.view(B * T, -1), self.lm_head, rows, extra)
        return self.vocab_logits(self.lm_head(x)), None  # (B, T, n_rows) -> (B, T, vocab)

    def new_cache(self, batch_size: int = 1, dtype: torch.dtype | None = None) -> KVCache:
        """A preallocated KV cache for `batch_size` streams on the model's device, in `dtype` (default: the
        model's)."""
        c, p = self.config, self.transformer.wpe.weight
        return KVCache(c.n_layer, batch_size, c.n_head, c.block_size, c.n_embd // c.n_head, p.device, dtype or p.dtype)
