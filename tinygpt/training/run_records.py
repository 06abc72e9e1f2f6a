"""What a run leaves for its readers while it goes (tinygpt.evaluation.history reads it; metrics.py keeps the
evaluations): progress.json every few seconds and at the end (the step, tokens/s, time left, and whether the run
is going, ended or stopped), and with `--snapshots N` small serving copies of the weights at N steps spread
log-evenly over the run (int8, as the shipped model is stored), so a reader can see noise turn into stories; and
the copy index of its training data (tinygpt.data.copy_index), carried from the data folder."""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import torch

from tinygpt.data.copy_index import FILES as COPY_INDEX_FILES
from tinygpt.data.copy_index import CopyIndex, CopyIndexError
from tinygpt.evaluation.history import ENDED, RUNNING, list_snapshots, snapshot_path, snapshot_steps, write_progress
from tinygpt.model.checkpoint import save_checkpoint

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 2.0  # progress.json at most this often (a state change is written at once)


def carry_copy_index(data_dir: str | Path, out_dir: Path) -> str:
    """Copy the data's copy index into the run (when it is the data's: prepare_data.py writes it) and return
    the data's fingerprint from its meta.json ('' when it has none), which each checkpoint records."""
    data_dir = Path(data_dir)
    try:
        fingerprint = json.loads((data_dir / "meta.json").read_text(encoding="utf-8")).get("fingerprint", "")
    except (OSError, ValueError):
        return ""
    try:
        if CopyIndex.load(data_dir).info.get("data_fingerprint") != fingerprint:
            raise CopyIndexError("the copy index is older than the data")
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in COPY_INDEX_FILES:
            shutil.copyfile(data_dir / name, out_dir / name)
    except (CopyIndexError, OSError) as e:
        log.info("no copy index for this run (%s): the playground will not mark copied spans; run "
                 "`python prepare_data.py` again to add one", e)
    return fingerprint


class RunRecorder:
    """Progress and snapshots of one run (on the main process). `snapshots` is how many to keep in all; on
    resume the ones already taken up to `step` count."""

    def __init__(self, out_dir: Path, snapshots: int, step: int, clock=time.monotonic) -> None:
        self.out_dir, self.snapshots, self.clock = Path(out_dir), snapshots, clock
        self.taken = [s.step for s in list_snapshots(self.out_dir) if s.step <= step] if snapshots else []
        self.started, self._last = time.time(), -PROGRESS_EVERY_S

    def progress(self, step: int, max_iters: int, loss: float | None, tokens_per_sec: float,
                 seconds_left: float | None, state: str = RUNNING, force: bool = False, **extra: object) -> None:
        """Write progress.json (throttled to PROGRESS_EVERY_S unless `force` or the run has ended)."""
        now = self.clock()
        if state == RUNNING and not force and now - self._last < PROGRESS_EVERY_S:
            return
        self._last = now
        try:
            write_progress(self.out_dir, state=state, step=step, max_iters=max_iters, loss=loss,
                           tokens_per_sec=round(tokens_per_sec, 1), seconds_left=seconds_left,
                           started=self.started, **extra)
        except OSError as e:  # a reader's file: never worth stopping a run for
            log.warning("could not write %s/progress.json: %s", self.out_dir, e)

    def due(self, step: int, max_iters: int) -> bool:
        """Whether a snapshot is due at `step` under the current plan (a re-planned run moves the later ones;
        the last step always gets one)."""
        if not self.snapshots or step in self.taken:
            return False
        targets = snapshot_steps(max_iters, self.snapshots)
        k = len(self.taken)
        return step >= max_iters or (k < len(targets) and step >= targets[k])

    def snapshot(self, model: torch.nn.Module, step: int, tokens_seen: int, val_loss: float | None = None) -> Path:
        """Keep `model` as it is now in history/step-NNNNNN (int8 matrices, fp32 scales)."""
        path = save_checkpoint(model, snapshot_path(self.out_dir, step), int8=True, step=step,
                               tokens_seen=tokens_seen, val_loss=val_loss)
        self.taken.append(step)
        log.info("snapshot %d of %d at step %d: %s", len(self.taken), self.snapshots, step, path)
        return path

    def finish(self, step: int, max_iters: int, state: str = ENDED, reason: str = "") -> None:
        self.progress(step, max_iters, None, 0.0, 0.0, state=state, force=True, reason=reason)
