"""Where stories come from: local .txt / .jsonl / .json / .parquet files, or a Hugging Face Hub dataset.

Every reader yields one story (a stripped string) at a time, so memory stays flat in dataset size.
Bad input raises `DataError` with a message that names the file and says what to do.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterator

from tinygpt.data.tokenizer import EOT_TEXT

log = logging.getLogger(__name__)

EOT_LINE = EOT_TEXT
EXTENSIONS = (".txt", ".jsonl", ".json", ".parquet")


class DataError(Exception):
    """Input the data pipeline cannot use; the message says which and what to do."""


def check_files(paths: list[str]) -> list[Path]:
    """Refuse missing files and unknown extensions before any work starts."""
    out = []
    for p in map(Path, paths):
        if not p.is_file():
            raise DataError(f"{p}: no such file")
        if p.suffix.lower() not in EXTENSIONS:
            raise DataError(f"{p}: unknown extension {p.suffix!r}; use one of {', '.join(EXTENSIONS)}")
        out.append(p)
    return out


def read_files(paths: list[Path], errors: str = "strict", replaced: set | None = None) -> Iterator[str]:
    """Stories from each file in turn; a file that holds none is an error."""
    for path in paths:
        reader = {".txt": read_txt, ".jsonl": read_jsonl, ".json": read_json,
                  ".parquet": read_parquet}[path.suffix.lower()]
        count = 0
        for story in reader(path, errors, replaced):
            count += 1
            yield story
        if count == 0:
            raise DataError(f"{path}: no stories found (is the file empty?)")


def _decode(line: bytes, path: Path, offset: int, errors: str, replaced: set | None = None) -> str:
    """`line` as text. errors 'replace': bad bytes become U+FFFD and each bad sequence's (path, byte offset)
    goes into `replaced`, for one report at the end (not a warning in the middle of a progress bar)."""
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as e:
        if errors != "replace":
            raise DataError(f"{path}: not valid UTF-8 at byte offset {offset + e.start}; re-encode the file "
                            "as UTF-8, or pass --errors replace to replace bad bytes") from None
        if replaced is not None:
            replaced.update((str(path), offset + start) for start in _bad_starts(line))
        return line.decode("utf-8", errors="replace")


def _bad_starts(line: bytes) -> list[int]:
    """Offsets in `line` where an invalid UTF-8 sequence starts."""
    starts, pos = [], 0
    while True:
        try:
            line[pos:].decode("utf-8")
            return starts
        except UnicodeDecodeError as e:
            starts.append(pos + e.start)
            pos += e.end


def read_txt(path: Path, errors: str = "strict", replaced: set | None = None) -> Iterator[str]:
    """Stories separated by lines that hold exactly `<|endoftext|>` (the official TinyStories format)."""
    lines: list[str] = []
    offset = 0
    with open(path, "rb") as f:
        for raw in f:
            line = _decode(raw, path, offset, errors, replaced)
            offset += len(raw)
            if line.strip() == EOT_LINE:
                if story := "".join(lines).strip():
                    yield story
                lines = []
            else:
                lines.append(line)
    if story := "".join(lines).strip():
        yield story


def _story(record: object, where: str) -> str:
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise DataError(f"{where}: no 'text' field; each record must be an object like {{\"text\": \"...\"}}")
    return record["text"].strip()


def read_jsonl(path: Path, errors: str = "strict", replaced: set | None = None) -> Iterator[str]:
    offset = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            line = _decode(raw, path, offset, errors, replaced)
            offset += len(raw)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if story := _story(record, f"{path}:{lineno}"):
                yield story


def read_json(path: Path, errors: str = "strict", replaced: set | None = None) -> Iterator[str]:
    """A JSON array of {"text": ...} objects, or JSON lines under a .json name."""
    with open(path, "rb") as f:
        head = f.read(64).lstrip()
    if not head.startswith(b"["):
        yield from read_jsonl(path, errors, replaced)
        return
    text = _decode(path.read_bytes(), path, 0, errors, replaced)
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    for i, record in enumerate(records):
        if story := _story(record, f"{path}[{i}]"):
            yield story


def read_parquet(path: Path, errors: str = "strict", replaced: set | None = None) -> Iterator[str]:
    import pyarrow.parquet as pq  # heavy; only when parquet is used

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise DataError(f"{path}: not a readable parquet file ({e})") from None
    if "text" not in pf.schema_arrow.names:
        raise DataError(f"{path}: no 'text' column (columns: {pf.schema_arrow.names})")
    for batch in pf.iter_batches(columns=["text"], batch_size=4096):
        for story in batch.column(0).to_pylist():
            if story and (story := story.strip()):
                yield story


def hub_reachable(name: str, timeout_s: float = 5.0) -> bool:
    """Whether the Hub answers for dataset `name` within `timeout_s` (one request, no retries)."""
    from huggingface_hub import HfApi

    try:
        HfApi().dataset_info(name, timeout=timeout_s)
    except Exception as e:  # no network, DNS, firewall, unknown name: the cache is the only hope
        log.info("the Hub did not answer for %s (%s); looking in the local cache only", name, type(e).__name__)
        return False
    return True


def load_hub_splits(name: str, offline: bool = False) -> dict[str, object]:
    """The splits of a Hub dataset (memory-mapped Arrow tables), or a DataError saying how to go local.
    `offline` (or a Hub that does not answer) uses the local cache only, failing at once on a miss instead
    of retrying the network for half a minute."""
    import datasets  # heavy; only when the Hub is used

    cache_only = offline or not hub_reachable(name)
    if cache_only:
        datasets.config.HF_HUB_OFFLINE = True  # this process only: the library's switch, read at call time
    try:
        ds = datasets.load_dataset(name)
    except Exception as e:  # offline, unknown name, auth: all end the same way for the user
        why = ("the Hub did not answer (or offline mode is on) and it is not in the local cache" if cache_only
               else f"{type(e).__name__}: {str(e).splitlines()[0]}")
        raise DataError(
            f"could not load {name!r} from the Hugging Face Hub ({why}). "
            "Offline or behind a firewall? Use local files instead: python prepare_data.py "
            "--train-files train.txt --val-files valid.txt (.txt with <|endoftext|> lines, .jsonl, .parquet)"
        ) from None
    if "train" not in ds:
        raise DataError(f"{name!r} has no 'train' split (splits: {list(ds)})")
    if "text" not in ds["train"].column_names:
        raise DataError(f"{name!r} has no 'text' column (columns: {ds['train'].column_names})")
    return dict(ds)


def hub_stories(split: object) -> Iterator[str]:
    for batch in split.iter(batch_size=4096):
        for story in batch["text"]:
            if story and (story := story.strip()):
                yield story
