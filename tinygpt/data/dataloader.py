"""Training batches from the uint16 token memmaps that prepare_data.py writes, without loading them into RAM."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from tinygpt.data.sources import DataError


class TokenDataset:
    """A memory-mapped token file cut into (x, y) windows of `block_size` tokens (y is x shifted by one)."""

    def __init__(self, path: str | Path, block_size: int) -> None:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: no such file; run prepare_data.py first (see README)")
        if path.stat().st_size % 2:
            raise DataError(f"{path}: odd size, not a uint16 token file; rerun prepare_data.py --force")
        self.path, self.block_size = path, block_size
        self.data = np.memmap(path, dtype=np.uint16, mode="r")
        if len(self.data) <= block_size + 1:
            raise DataError(f"{path}: {len(self.data)} tokens, too few for block_size {block_size}")

    def __len__(self) -> int:
        return len(self.data)

    def windows(self, starts: torch.Tensor | np.ndarray, device: torch.device | str = "cpu",
                length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y of shape (B, length) (default: block_size) for windows that begin at `starts`."""
        T = length or self.block_size
        rows = np.stack([self.data[i:i + T + 1] for i in np.asarray(starts)]).astype(np.int64)
        xy = torch.from_numpy(rows)
        if torch.device(device).type == "cuda":
            xy = xy.pin_memory().to(device, non_blocking=True)
        else:
            xy = xy.to(device)
        return xy[:, :-1], xy[:, 1:]

    def used_token_ids(self) -> np.ndarray:
        """The distinct token ids in the file, sorted (one pass over it; ~1 s per 500M tokens)."""
        counts = np.zeros(1 << 16, dtype=np.int64)
        step = 1 << 26  # in slices, so the memmap is never read into memory whole
        for s in range(0, len(self.data), step):
            counts += np.bincount(self.data[s:s + step], minlength=1 << 16)
        return np.flatnonzero(counts)

    def all_windows(self, batch_size: int, device: torch.device | str = "cpu",
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every token as a target exactly once (all but the first, which has no context), in back-to-back
        windows; the tail is padded with target -1, which the loss ignores."""
        T, n = self.block_size, len(self.data)
        starts = np.arange(0, n - 1, T)
        for i in range(0, len(starts), batch_size):
            rows = np.full((len(starts[i:i + batch_size]), T + 1), -1, dtype=np.int64)
            for r, s in enumerate(starts[i:i + batch_size]):
                chunk = self.data[s:s + T + 1]
                rows[r, :len(chunk)] = chunk
            xy = torch.from_numpy(rows).to(device)
            yield xy[:, :-1].clamp(min=0), xy[:, 1:]

    def random_batch(self, batch_size: int, generator: torch.Generator,
                     device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Windows at random offsets; the generator's state is the data position, for exact resumes."""
        starts = torch.randint(len(self.data) - self.block_size - 1, (batch_size,), generator=generator)
        return self.windows(starts.numpy(), device)

    def fixed_batches(self, n_batches: int, batch_size: int,
                      device: torch.device | str = "cpu") -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The same evenly spread windows every call, so evaluations are comparable over a run."""
        last = len(self.data) - self.block_size - 1
        starts = np.linspace(0, last, n_batches * batch_size).astype(np.int64)
        return [self.windows(starts[i * batch_size:(i + 1) * batch_size], device) for i in range(n_batches)]
