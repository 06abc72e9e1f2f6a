"""Ranking a model's head rows as if they were its logits over every token id (GPT.vocab_logits), without
building those: for a model with kept-token rows, the decode step ranks a fifth of the vocabulary."""
from __future__ import annotations

from typing import Callable

import torch

from tinygpt.model.gpt import GPT

TopK = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]  # torch.topk's answer


class VocabTopK:
    """`model.vocab_logits(rows).topk(k)` from head outputs `rows` (B, n_rows): (values, ids), each (B, k),
    descending. The shared row stands for all of its ids at once (they tie, and may come in another order than
    topk of the full logits gives). `topk`: any function with torch.topk's answer (kernels.topk on CPUs)."""

    def __init__(self, model: GPT, k: int, topk: TopK = torch.topk) -> None:
        c = model.config
        self.k, self.topk, self.kept = k, topk, c.kept_tokens
        if not self.kept:
            return
        self.n_shared, self.cost = c.vocab_size - c.kept_tokens, model.shared_row_cost()
        row_of = model.row_of
        kept = row_of != c.kept_tokens
        ids = torch.arange(len(row_of), device=row_of.device)
        self.id_of_row = torch.empty(c.n_rows, dtype=torch.long, device=ids.device)  # each kept row's id
        self.id_of_row[row_of[kept].long()] = ids[kept]
        self.id_of_row[-1] = ids[~kept][0]
        self.shared_ids = ids[~kept]  # ascending: the ids that share the last row

    def __call__(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.k
        if not self.kept:
            return tuple(self.topk(rows, k))
        rows = torch.cat([rows[:, :self.kept], rows[:, self.kept:] - self.cost], dim=1)  # the shared row as one id
        return self.expand(*self.topk(rows, min(k, self.kept + 1)), rows[:, self.kept:])

    def expand(self, top_values: torch.Tensor, top_rows: torch.Tensor, shared: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(values, ids), each (B, k), from the best head rows ranked with the shared row's value lowered by
        `shared_row_cost` (`top_values`, `top_rows`, (B, K)) and that lowered value `shared` (B, 1): the shared
        row's place is taken by its ids, in order. Without kept tokens, rows are ids: unchanged."""
        if not self.kept:
            return top_values, top_rows
        k, S, n_shared = self.k, self.kept, self.n_shared
        K, device = top_values.size(1), top_values.device
        j = torch.where(top_rows == S, torch.arange(K, device=device), K).amin(1, keepdim=True)  # its rank
        p = torch.arange(k, device=device)
        in_shared = (p >= j) & (p < j + n_shared)  # (B, k): the places its ids take
        src = torch.where(p < j, p, p - n_shared + 1).clamp(0, K - 1)  # the place of each other id's row
        values = torch.where(in_shared, shared, top_values.gather(1, src))
        ids = torch.where(in_shared, self.shared_ids[(p - j).clamp(0, n_shared - 1)],
                          self.id_of_row[top_rows.gather(1, src)])
        return values, ids
