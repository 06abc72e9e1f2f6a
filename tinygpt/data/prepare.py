"""Data preparation: stories -> GPT-2 tokens -> `train.bin` / `val.bin` (uint16 memmaps) + `meta.json`, and the
copy index of train.bin (tinygpt.data.copy_index).

Stages: resolve the sources, fingerprint them (a rerun with the same inputs is skipped), tokenize in
parallel batches streaming straight to temporary files (memory stays flat), then rename everything
into place at the end, so an interrupted run leaves the previous outputs intact; then the copy index (kept when
it is already this data's, so a rerun of an older data folder adds it).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tqdm import tqdm

from tinygpt.data.copy_index import ensure_copy_index
from tinygpt.data.sources import DataError, check_files, hub_stories, load_hub_splits, read_files
from tinygpt.data.tokenizer import Tokenizer
from tinygpt.fileio import write_text_atomic

log = logging.getLogger(__name__)
DTYPE = np.uint16  # GPT-2's 50,257 ids fit in 16 bits: half the disk and RAM of int32


@dataclass(frozen=True)
class PrepareConfig:
    dataset: str = field(default="roneneldan/TinyStories", metadata={
        "help": "Hugging Face Hub dataset with train/validation splits and a 'text' column"})
    train_files: list[str] = field(default_factory=list, metadata={
        "help": "local .txt (stories split by <|endoftext|> lines), .jsonl/.json ('text' field) or .parquet "
                "files; used instead of --dataset", "metavar": "FILE"})
    val_files: list[str] = field(default_factory=list, metadata={
        "help": "local validation files (same formats); without them --val-fraction is carved out",
        "metavar": "FILE"})
    val_fraction: float = field(default=0.005, metadata={
        "help": "share of training stories held out for validation when the source has no validation split"})
    out_dir: str = field(default="data/tinystories", metadata={"help": "where train.bin, val.bin, meta.json go"})
    num_proc: int = field(default_factory=lambda: os.cpu_count() or 1, metadata={
        "help": "tokenizer threads; the default is every core"})
    errors: str = field(default="strict", metadata={
        "help": "invalid UTF-8: 'strict' stops with the file and byte offset, 'replace' warns and replaces",
        "choices": ["strict", "replace"]})
    force: bool = field(default=False, metadata={"help": "redo the work even if the outputs are up to date"})
    offline: bool = field(default=False, metadata={
        "help": "never contact the Hub: --dataset comes from the local cache (default: $HF_HUB_OFFLINE)"})
    batch_size: int = field(default=1024, metadata={"help": "stories per tokenizer batch"})


@dataclass
class Split:
    name: str
    stories: Iterable[str]
    out: Path


def _fingerprint(config: PrepareConfig) -> str:
    """What the outputs depend on: the inputs (name, size, mtime), val split rule and tokenizer."""
    files = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns)
             for p in check_files(config.train_files + config.val_files)]
    key = dict(files=files, dataset=None if files else config.dataset, val_fraction=config.val_fraction,
               val_files=len(config.val_files), tokenizer=Tokenizer.sha256, dtype=np.dtype(DTYPE).name)
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _up_to_date(out_dir: Path, fingerprint: str) -> bool:
    try:
        meta = json.loads((out_dir / "meta.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return meta.get("fingerprint") == fingerprint and all(
        (out_dir / f"{s}.bin").is_file() and (out_dir / f"{s}.bin").stat().st_size == 2 * meta[s]["tokens"]
        for s in ("train", "val"))


def _carve(stories: Iterable[str], fraction: float, want_val: bool) -> Iterator[str]:
    """Every story whose slot falls on a multiple of 1/fraction goes to val: spread out, deterministic."""
    for i, story in enumerate(stories):
        is_val = int((i + 1) * fraction) > int(i * fraction)
        if is_val == want_val:
            yield story


def _splits(config: PrepareConfig, out_dir: Path, replaced: set) -> tuple[list[Split], str]:
    if config.train_files:
        train = check_files(config.train_files)
        val = check_files(config.val_files)
        source = "local files: " + ", ".join(map(str, train + val))
        make_train = lambda: read_files(train, config.errors, replaced)  # noqa: E731  (re-read per split)
        make_val = (lambda: read_files(val, config.errors, replaced)) if val else None
    else:
        if config.val_files:
            raise DataError("--val-files needs --train-files as well")
        ds = load_hub_splits(config.dataset, config.offline)
        source = f"hub: {config.dataset}"
        make_train = lambda: hub_stories(ds["train"])  # noqa: E731
        make_val = (lambda: hub_stories(ds["validation"])) if "validation" in ds else None
    if make_val is None:
        if not 0.0 < config.val_fraction < 1.0:
            raise DataError(f"the source has no validation split and --val-fraction is {config.val_fraction}; "
                            "give --val-files, or a --val-fraction between 0 and 1")
        log.info("no validation split: holding out %.2f%% of the training stories", 100 * config.val_fraction)
        base = make_train
        make_val = lambda: _carve(base(), config.val_fraction, True)  # noqa: E731
        make_train = lambda: _carve(base(), config.val_fraction, False)  # noqa: E731
    return [Split("train", make_train(), out_dir / "train.bin"), Split("val", make_val(), out_dir / "val.bin")], source


def _batches(items: Iterable[str], n: int) -> Iterator[list[str]]:
    it = iter(items)
    while batch := list(islice(it, n)):
        yield batch


def _encode(tokenizer: Tokenizer, batch: list[str]) -> np.ndarray:
    ids = tokenizer.encode_batch(batch)
    for story in ids:
        story.append(tokenizer.eot_id)  # <|endoftext|> after every story
    return np.fromiter(chain.from_iterable(ids), dtype=DTYPE, count=sum(map(len, ids)))


def tokenize_to_file(stories: Iterable[str], path: Path, tokenizer: Tokenizer, num_threads: int,
                     batch_size: int, desc: str) -> tuple[int, int]:
    """Stream tokens of all stories into `path` (raw uint16); return (tokens, stories).

    Batches go to a thread pool (tiktoken releases the GIL) and come back in order; at most
    2 x threads batches are in flight, so memory does not grow with the data.
    """
    tokens = count = 0
    with open(path, "wb") as f, ThreadPoolExecutor(num_threads) as pool, \
            tqdm(desc=desc, unit="tok", unit_scale=True, mininterval=1.0) as bar:
        pending = []
        for batch in _batches(stories, batch_size):
            pending.append((len(batch), pool.submit(_encode, tokenizer, batch)))
            if len(pending) >= 2 * num_threads:
                tokens, count = _drain(pending.pop(0), f, bar, tokens, count)
        for item in pending:
            tokens, count = _drain(item, f, bar, tokens, count)
    return tokens, count


def _drain(item, f, bar, tokens: int, count: int) -> tuple[int, int]:
    n_stories, future = item
    arr = future.result()
    arr.tofile(f)
    bar.update(arr.size)
    return tokens + arr.size, count + n_stories


def _check_writable(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise DataError(f"{out_dir}: cannot write there ({e.strerror}); pick another --out-dir") from None


def report_replaced(replaced: set, shown: int = 10) -> None:
    """One warning, after the progress bars: how many bad UTF-8 sequences were replaced, and where."""
    by_file: dict[str, list[int]] = {}
    for path, offset in sorted(replaced):
        by_file.setdefault(path, []).append(offset)
    where = "; ".join(f"{path} at byte offset{'s' if len(o) > 1 else ''} {', '.join(map(str, o[:shown]))}"
                      + (f" and {len(o) - shown} more" if len(o) > shown else "") for path, o in by_file.items())
    log.warning("replaced %d invalid UTF-8 sequence%s with U+FFFD: %s", len(replaced),
                "" if len(replaced) == 1 else "s", where)


def copy_index(out_dir: Path, fingerprint: str) -> None:
    """The stage after the tokens: the copy index of train.bin (kept when it is already this data's)."""
    start = time.perf_counter()
    index = ensure_copy_index(out_dir, fingerprint)
    log.info("copy index: %d distinct %d-token windows in %.1f MB (false positives %.1f%%) in %.1fs",
             index.info["windows"], index.info["gram"], index.bits.nbytes / 1e6,
             100 * index.info["false_positive_rate"], time.perf_counter() - start)


def prepare(config: PrepareConfig) -> dict:
    """Run the whole preparation; return the meta.json content. Raises DataError on bad input."""
    out_dir = Path(config.out_dir)
    if config.num_proc < 1 or config.batch_size < 1:
        raise DataError("--num-proc and --batch-size must be at least 1")
    fingerprint = _fingerprint(config)
    if not config.force and _up_to_date(out_dir, fingerprint):
        log.info("%s is up to date with these inputs (pass --force to redo it)", out_dir)
        copy_index(out_dir, fingerprint)
        return json.loads((out_dir / "meta.json").read_text())
    _check_writable(out_dir)
    replaced: set = set()  # (file, byte offset) of each invalid UTF-8 sequence replaced (--errors replace)
    splits, source = _splits(config, out_dir, replaced)
    tokenizer, start = Tokenizer(), time.perf_counter()
    meta: dict = {}
    staged = [(s.out.with_name(f".{s.out.name}.tmp-{os.getpid()}"), s.out) for s in splits]
    try:
        for split, (tmp, _) in zip(splits, staged):
            tokens, stories = tokenize_to_file(split.stories, tmp, tokenizer, config.num_proc,
                                               config.batch_size, split.name)
            if stories == 0:
                raise DataError(f"the {split.name} split has no stories; check the input files")
            meta[split.name] = {"tokens": tokens, "stories": stories}
            log.info("%s: %d stories, %d tokens", split.name, stories, tokens)
        for tmp, final in staged:  # all outputs are complete: swap them in together
            os.replace(tmp, final)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    if replaced:
        report_replaced(replaced)
        meta["utf8_replaced"] = len(replaced)
    meta.update(dtype=np.dtype(DTYPE).name, tokenizer={"name": Tokenizer.name, "sha256": Tokenizer.sha256},
                source=source, fingerprint=fingerprint, seconds=round(seconds, 2),
                written=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                config={k: v for k, v in dataclasses.asdict(config).items() if k != "force"})
    write_text_atomic(out_dir / "meta.json", json.dumps(meta, indent=2) + "\n")
    copy_index(out_dir, fingerprint)
    total = meta["train"]["tokens"] + meta["val"]["tokens"]
    log.info("wrote %s in %.1fs (%.0f tokens/s)", out_dir, seconds, total / max(seconds, 1e-9))
    return meta
