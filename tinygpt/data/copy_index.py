"""The copy index: which runs of tokens appear verbatim in the training text, to show what a story copied.

A Bloom filter over every GRAM-token window of train.bin that lies inside one story (8 bits of memory or so
per distinct window; no false negatives, false positives at the rate `false_positive_rate` says, measured).
A span is copied when every GRAM-token window in it is found; a span counts when it is at least `min_tokens`
long. TinyStories repeats its openings ("Once upon a time, there was a little girl named Lily" is 12 tokens),
so short spans are not copying: the playground's MIN_TOKENS is where held-out stories, which no model wrote,
stop having any (bench/RESULTS.md, "Copied spans"). A false span needs MIN_TOKENS - GRAM + 1 false positives
in a row: about 0.06^17 here, never.

Written by prepare_data.py beside train.bin (`copies.safetensors` and a readable `copies.json`), carried into
each run by train.py and shipped with the model.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tinygpt.data.tokenizer import EOT_ID, Tokenizer
from tinygpt.fileio import atomic_path

GRAM = 8  # tokens per window looked up
MIN_TOKENS = 24  # the shortest span the playground marks as copied
BITS_PER_WINDOW = 6
HASHES = 4
FILES = ("copies.safetensors", "copies.json")
_P = np.uint64(1_000_003)


class CopyIndexError(ValueError):
    """No usable copy index (missing, unreadable, or another model's data); the message says what to do."""


def window_hashes(tokens: np.ndarray, gram: int = GRAM) -> tuple[np.ndarray, np.ndarray]:
    """(hash of each gram-token window (uint64), whether it lies inside one story (no <|endoftext|> in it))."""
    t = np.asarray(tokens, dtype=np.uint64)
    n = len(t) - gram + 1
    if n <= 0:
        return np.zeros(0, np.uint64), np.zeros(0, bool)
    h = np.zeros(n, dtype=np.uint64)
    for j in range(gram):  # a polynomial hash mod 2**64 (numpy wraps around)
        h = h * _P + t[j:j + n] + np.uint64(1)
    eot = np.concatenate([[0], np.cumsum(t == EOT_ID)])
    return h, eot[gram:gram + n] == eot[:n]


@dataclass(frozen=True)
class CopyIndex:
    bits: np.ndarray  # (m,) uint8, packed
    info: dict  # copies.json: gram, hashes, windows, bits, data fingerprint, tokenizer, false-positive rate

    @property
    def m(self) -> int:
        return self.info["bits"]

    def _positions(self, h: np.ndarray) -> np.ndarray:
        """(HASHES, n) bit positions of each hash (double hashing)."""
        lo, hi = h & np.uint64(0xFFFFFFFF), (h >> np.uint64(32)) | np.uint64(1)
        k = np.arange(self.info["hashes"], dtype=np.uint64)[:, None]
        return ((lo[None] + k * hi[None]) % np.uint64(self.m)).astype(np.int64)

    @classmethod
    def build(cls, tokens: np.ndarray, fingerprint: str = "", bits_per_window: int = BITS_PER_WINDOW,
              hashes: int = HASHES) -> CopyIndex:
        h, inside = window_hashes(tokens)
        distinct = np.unique(h[inside])
        m = max(64, int(len(distinct) * bits_per_window) // 8 * 8)
        info = {"gram": GRAM, "hashes": hashes, "bits": m, "windows": int(len(distinct)),
                "data_fingerprint": fingerprint, "tokenizer_sha256": Tokenizer.sha256,
                "false_positive_rate": round((1 - math.exp(-hashes * len(distinct) / m)) ** hashes, 4)}
        index = cls(np.zeros(m // 8, np.uint8), info)
        flat = np.zeros(m, bool)
        flat[index._positions(distinct).ravel()] = True
        return cls(np.packbits(flat), info)

    def found(self, ids: list[int] | np.ndarray) -> np.ndarray:
        """(len(ids) - GRAM + 1,) bool: whether each GRAM-token window of `ids` is in the training text."""
        h, inside = window_hashes(np.asarray(ids, dtype=np.int64))
        if not len(h):
            return np.zeros(0, bool)
        pos = self._positions(h)
        bit = (self.bits[pos >> 3] >> (7 - (pos & 7)).astype(np.uint8)) & 1
        return inside & bit.all(axis=0).astype(bool)

    def spans(self, ids: list[int] | np.ndarray, min_tokens: int = MIN_TOKENS) -> list[tuple[int, int]]:
        """[(start, end)) token ranges of `ids`, each at least `min_tokens` long, whose every window is found."""
        found, out, i = self.found(ids), [], 0
        while i < len(found):
            if not found[i]:
                i += 1
                continue
            j = i
            while j + 1 < len(found) and found[j + 1]:
                j += 1
            if j - i + GRAM >= min_tokens:
                out.append((i, j + GRAM))
            i = j + 1
        return out

    def save(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        with atomic_path(directory / FILES[0]) as tmp:
            save_file({"bits": torch.from_numpy(self.bits)}, str(tmp))
        with atomic_path(directory / FILES[1]) as tmp:
            Path(tmp).write_text(json.dumps(self.info, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: str | os.PathLike) -> CopyIndex:
        directory = Path(directory)
        if not all((directory / f).is_file() for f in FILES):
            raise CopyIndexError(f"{directory} has no copy index ({' and '.join(FILES)}); `python prepare_data.py` "
                                 "writes one beside train.bin and train.py carries it into the run")
        try:
            info = json.loads((directory / FILES[1]).read_text(encoding="utf-8"))
            bits = load_file(str(directory / FILES[0]))["bits"].numpy()
        except (OSError, ValueError, KeyError, SafetensorError) as e:
            raise CopyIndexError(f"{directory}: unreadable copy index ({e}); run `python prepare_data.py` again") from e
        if info.get("tokenizer_sha256") != Tokenizer.sha256 or info.get("gram") != GRAM or len(bits) * 8 != info["bits"]:
            raise CopyIndexError(f"{directory}: the copy index was made for another tokenizer or format; run "
                                 "`python prepare_data.py --force` again")
        return cls(bits, info)


def ensure_copy_index(data_dir: str | os.PathLike, fingerprint: str) -> CopyIndex:
    """The copy index of data_dir/train.bin, built unless one for the same data (`fingerprint`) is there."""
    data_dir = Path(data_dir)
    try:
        index = CopyIndex.load(data_dir)
        if index.info.get("data_fingerprint") == fingerprint:
            return index
    except CopyIndexError:
        pass
    index = CopyIndex.build(np.memmap(data_dir / "train.bin", dtype=np.uint16, mode="r"), fingerprint)
    index.save(data_dir)
    return index


def find_copy_index(checkpoint: str | os.PathLike, fingerprint: str = "") -> CopyIndex:
    """The copy index a model carries: in its own folder (a shipped model) or its run's (out/ for out/best).
    `fingerprint`: the training data's, as the model's checkpoint records it ('' when it does not); an index of
    other data is refused. CopyIndexError says what to do."""
    for folder in (Path(checkpoint), Path(checkpoint).parent):
        if all((folder / f).is_file() for f in FILES):
            index = CopyIndex.load(folder)
            if fingerprint and index.info.get("data_fingerprint") != fingerprint:
                raise CopyIndexError(f"{folder}: the copy index is of other training data than this model's, so "
                                     "copied spans are not shown; run `python prepare_data.py` on the data the "
                                     "model was trained on, and train it again")
            return index
    raise CopyIndexError("This model carries no copy index of its training text, so copied spans cannot be shown: "
                         "`python prepare_data.py` writes one beside train.bin and `python train.py` carries it "
                         "into the run (out/).")
