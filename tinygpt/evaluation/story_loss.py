"""Story loss: every validation story scored from its own beginning, each token predicted from the window the
engine would hold while writing it (the story so far, up to block_size tokens, then sliding to the last 3/4 as
tinygpt.inference.engine does), split at position 128 of the story.

Why not the windowed val loss: that scores back-to-back block_size windows of the token file, so how much of its
story a token sees depends on where the window cut fell, and a model with a longer window is scored on other
contexts. Story loss gives each model the contexts its own engine gives it when it writes a story, so windows of
128, 256 and 512 compare fairly; the part past position 128 is what a 128-token window writes without the
story's beginning in view.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from tinygpt.data.tokenizer import EOT_ID
from tinygpt.inference.engine import sliding_keep
from tinygpt.model.gpt import GPT

SPLIT = 128  # the story position the figures are split at (the seed model's window)


def split_stories(tokens: np.ndarray, eot_id: int = EOT_ID) -> list[np.ndarray]:
    """A token file's stories, each with its closing <|endoftext|> (the model ending the story is scored too)."""
    ends = np.flatnonzero(tokens == eot_id)
    starts = np.concatenate([[0], ends + 1])
    stories = [tokens[a:b + 1] for a, b in zip(starts, ends) if b > a]
    if starts[-1] < len(tokens):  # a last story with no <|endoftext|> after it
        stories.append(tokens[starts[-1]:])
    return stories


def story_windows(story: np.ndarray, block_size: int, eot_id: int = EOT_ID
                  ) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """(window, targets, first) for one story after <|endoftext|>: the model reads `window` (at most block_size
    tokens) and is scored at positions first.. on `targets` (the story's next tokens; -1 past its end). These
    are the engine's contexts: the whole story so far until it fills the window, then after each slide the last
    `keep` tokens, growing again to block_size."""
    seq = np.concatenate([[eot_id], story]).astype(np.int64)
    keep, start, first = sliding_keep(block_size), 0, 0
    while start + first < len(seq) - 1:
        window = seq[start:start + block_size]
        targets = np.full(len(window), -1, dtype=np.int64)
        nxt = seq[start + 1:start + block_size + 1]
        targets[first:len(nxt)] = nxt[first:]
        yield window, targets, start
        start, first = start + block_size + 1 - keep, keep - 1


def forward_positions(tokens: np.ndarray, block_size: int, max_stories: int | None = None) -> int:
    """The token positions `story_loss` runs forward (each twice at most: the parts before and after the
    split): what a time budget reserves for it."""
    return 2 * sum(len(w) for story in split_stories(tokens)[:max_stories] for w, _, _ in story_windows(story, block_size))


@torch.no_grad()
def story_loss(model: GPT, tokens: np.ndarray, max_stories: int | None = None, batch_size: int = 16,
               split: int = SPLIT) -> dict[str, float]:
    """Mean loss (nats per token) over the stories of `tokens` (the first `max_stories` of them): over all their
    tokens, and over the tokens before and after story position `split`; with the counts."""
    device, block_size = next(model.parameters()).device, model.config.block_size
    rows = [(w, t, s) for story in split_stories(tokens)[:max_stories] for w, t, s in story_windows(story, block_size)]
    was_training = model.training
    model.eval()
    sums, counts = {"before": 0.0, "after": 0.0}, {"before": 0, "after": 0}
    for i in range(0, len(rows), batch_size):
        batch = rows[i:i + batch_size]
        x = torch.zeros(len(batch), max(len(w) for w, _, _ in batch), dtype=torch.long)
        y = torch.full_like(x, -1)
        position = torch.full_like(x, -1)  # each target's position in its story
        for r, (w, t, s) in enumerate(batch):
            x[r, :len(w)], y[r, :len(t)] = torch.from_numpy(w), torch.from_numpy(t)
            position[r, :len(t)] = torch.arange(s, s + len(t))
        x, y, position = x.to(device), y.to(device), position.to(device)
        for part, mask in (("before", position < split), ("after", position >= split)):
            targets = torch.where(mask, y, -1)
            n = int((targets >= 0).sum())
            if n:
                sums[part] += float(model(x, targets)[1]) * n  # the model's own loss, over these targets only
                counts[part] += n
    model.train(was_training)
    n = counts["before"] + counts["after"]
    return {"all": (sums["before"] + sums["after"]) / max(n, 1),
            f"before {split}": sums["before"] / max(counts["before"], 1),
            f"after {split}": sums["after"] / max(counts["after"], 1),
            "tokens": n, f"tokens after {split}": counts["after"]}


def story_line(figures: dict[str, float], split: int = SPLIT) -> str:
    """'2.105 (before 128: 2.051, after: 2.190)': story loss as a log line or a card shows it."""
    after = f"{figures[f'after {split}']:.3f}" if figures.get(f"tokens after {split}", 1) else "none"
    return f"{figures['all']:.3f} (before {split}: {figures[f'before {split}']:.3f}, after: {after})"
