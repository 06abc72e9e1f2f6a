"""A training run as its readers see it: the evaluations in metrics.jsonl (losses, story loss, the sample story and
its figures), the live progress in progress.json (the step, tokens/s, time left, and whether the run is going,
ended or stopped) and the snapshots in history/ (small serving copies of the weights along the way).

train.py writes these (tinygpt.training); the playground's Training tab and `tinygpt.read_run` read them. Reading
never raises on what a run in progress or a user can leave behind: a half-written last line, a folder deleted
mid-read, no run at all. Each is reported in `Run.problem`, in words for the page. Torch-free.
"""
from __future__ import annotations

import json
import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from tinygpt.fileio import atomic_path

METRICS, PROGRESS, HISTORY = "metrics.jsonl", "progress.json", "history"
RUNNING, ENDED, STOPPED = "running", "ended", "stopped"  # Run.state
STALE_S = 120.0  # a "running" progress.json this old, from another machine, is taken as a run that stopped


@dataclass(frozen=True)
class Snapshot:
    """One serving copy of the weights kept along the way (`train.py --snapshots N`)."""

    step: int
    path: Path


@dataclass(frozen=True)
class Run:
    """What a run folder holds right now."""

    directory: Path
    records: tuple[dict, ...] = ()  # one per evaluation, oldest first
    progress: dict = field(default_factory=dict)  # the latest progress.json ({} if none)
    snapshots: tuple[Snapshot, ...] = ()  # oldest first
    problem: str | None = None  # why there is nothing (or less) to show, in words for a reader

    @property
    def state(self) -> str | None:
        """RUNNING, ENDED or STOPPED; None where the run wrote no progress."""
        return progress_state(self.progress) if self.progress else None


def run_folder(checkpoint: str | os.PathLike) -> Path | None:
    """Where the records of the run that wrote `checkpoint` are: the checkpoint's own folder (a shipped model
    carries them), else its parent (train.py's out/ holds best/ and last/), else None."""
    directory = Path(checkpoint)
    return next((d for d in (directory, directory.parent) if (d / METRICS).is_file()), None)


def read_run(directory: str | os.PathLike) -> Run:
    """The run in `directory` (train.py's --out-dir, e.g. out/), as much of it as can be read now."""
    directory = Path(directory)
    if not directory.is_dir():
        return Run(directory, problem=f"There is no run folder at {directory}: start one with "
                                      f"`python train.py --out-dir {directory}`.")
    records, skipped = read_records(directory / METRICS)
    progress = read_progress(directory / PROGRESS)
    problem = None
    if not records and not progress:
        problem = (f"No training run has written to {directory} yet (no {METRICS}). Start one with "
                   f"`python train.py --out-dir {directory}`; this tab follows it as it learns.")
    elif skipped:
        problem = f"{skipped} line(s) of {METRICS} could not be read and are left out."
    return Run(directory, tuple(records), progress, list_snapshots(directory), problem)


def read_records(path: Path) -> tuple[list[dict], int]:
    """The records of a metrics.jsonl and how many of its complete lines were not valid JSON. A last line
    without its newline is being written: it is left for the next read, never counted as broken."""
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return [], 0
    except (OSError, UnicodeDecodeError):
        return [], 1
    lines = text.split("\n")[:-1]  # the part after the last newline is unfinished
    records, skipped = [], 0
    for line in filter(str.strip, lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            skipped += 1
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
        else:
            skipped += 1
    return records, skipped


def read_progress(path: Path) -> dict:
    try:
        progress = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return progress if isinstance(progress, dict) else {}


def write_progress(directory: Path, **fields: object) -> None:
    """progress.json, written whole (readers never see half of it), with who wrote it and when."""
    record = {**fields, "pid": os.getpid(), "host": socket.gethostname(), "updated": time.time()}
    with atomic_path(Path(directory) / PROGRESS) as tmp:
        tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")


def progress_state(progress: dict, now: float | None = None) -> str:
    """The run's state from its progress.json. A run that was killed (SIGKILL, a crash, a closed laptop) never
    wrote "stopped": on this machine its process is gone; from another, its progress is over STALE_S old."""
    state = progress.get("state", RUNNING)
    if state != RUNNING:
        return state
    if progress.get("host") == socket.gethostname() and isinstance(progress.get("pid"), int):
        return RUNNING if _alive(progress["pid"]) else STOPPED
    updated = progress.get("updated")
    fresh = isinstance(updated, (int, float)) and (now or time.time()) - updated < STALE_S
    return RUNNING if fresh else STOPPED


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def snapshot_path(directory: Path, step: int) -> Path:
    return Path(directory) / HISTORY / f"step-{step:06d}"


def list_snapshots(directory: Path) -> tuple[Snapshot, ...]:
    """The complete snapshots in `directory`/history (a folder is complete once its config.json is in it)."""
    found = []
    try:
        entries = list((Path(directory) / HISTORY).iterdir())
    except OSError:
        return ()
    for entry in entries:
        name = entry.name
        if name.startswith("step-") and name[5:].isdigit() and (entry / "config.json").is_file():
            found.append(Snapshot(int(name[5:]), entry))
    return tuple(sorted(found, key=lambda s: s.step))


def snapshot_steps(max_iters: int, n: int, first: int = 10) -> list[int]:
    """`n` steps spread log-evenly from `first` to `max_iters` (the last is always max_iters): early steps are
    where noise turns into words, so they are kept closer together."""
    if n <= 0 or max_iters <= 0:
        return []
    if n == 1 or max_iters <= first:
        return [max_iters]
    ratio = math.log(max_iters / first)
    return sorted({round(first * math.exp(ratio * i / (n - 1))) for i in range(n)})
