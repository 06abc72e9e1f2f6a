"""A run's records as readers see them (tinygpt.evaluation.history), as train.py writes them
(tinygpt.training.run_records) and as the Training tab shows them (tinygpt.playground.run_view)."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest

from tests.test_train import MODEL, config
from tinygpt import GPT, Tokenizer, generate, load_checkpoint, read_run, save_checkpoint
from tinygpt.data.dataloader import TokenDataset
from tinygpt.evaluation.history import (ENDED, PROGRESS, RUNNING, STOPPED, progress_state, run_folder,
                                        snapshot_steps, write_progress)
from tinygpt.playground.run_view import RunCache, curve_frame, samples_html, snapshot_at, status_text
from tinygpt.training.run_records import RunRecorder
from tinygpt.training.trainer import Trainer

RECORD = {"step": 10, "tokens_seen": 2560, "train_loss": 5.0, "val_loss": 5.5, "time": 1000.0,
          "sample": "Once upon a time, there was a cat.", "sample_quality": {"ended": 0.0}}


def write_records(directory, records, tail=""):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def test_a_half_written_last_line_waits_and_a_broken_line_is_reported(tmp_path):
    """Catches a tab that shows a traceback (or drops the whole run) while train.py is mid-line: the unfinished
    line is read next time; a complete line that is not a record is left out and said."""
    write_records(tmp_path, [RECORD, {**RECORD, "step": 20}], tail='{"step": 30, "train_lo')
    run = read_run(tmp_path)
    assert [r["step"] for r in run.records] == [10, 20] and run.problem is None
    write_records(tmp_path, [RECORD], tail='not json\n{"step": 30}\n')
    run = read_run(tmp_path)
    assert [r["step"] for r in run.records] == [10, 30] and "1 line(s)" in run.problem


def test_no_run_and_a_deleted_folder_get_a_plain_message(tmp_path):
    assert "no run folder" in read_run(tmp_path / "out").problem.lower()
    (tmp_path / "out").mkdir()
    assert "python train.py --out-dir" in read_run(tmp_path / "out").problem
    write_records(tmp_path / "out", [RECORD])
    cache = RunCache()
    assert len(cache.read(tmp_path / "out")[1].records) == 1
    shutil.rmtree(tmp_path / "out")  # deleted while the tab is open: the next read says so
    run = cache.read(tmp_path / "out")[1]
    assert run.records == () and "no run folder" in status_text(run).lower() and curve_frame(run) is None


def test_a_run_that_was_killed_reads_as_stopped(tmp_path):
    """Catches a tab that says "training" forever after a SIGKILL (the run never wrote "stopped")."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    here = {"state": RUNNING, "host": socket.gethostname(), "updated": time.time()}
    assert progress_state({**here, "pid": os.getpid()}) == RUNNING
    assert progress_state({**here, "pid": dead.pid}) == STOPPED
    elsewhere = {"state": RUNNING, "host": "another-machine", "pid": 1}
    assert progress_state({**elsewhere, "updated": time.time()}) == RUNNING
    assert progress_state({**elsewhere, "updated": time.time() - 3600}) == STOPPED
    write_progress(tmp_path, state=ENDED, step=60)
    assert read_run(tmp_path).state == ENDED and json.loads((tmp_path / PROGRESS).read_text())["step"] == 60


def test_snapshots_are_spread_log_evenly_and_the_last_step_gets_one(tmp_path):
    assert snapshot_steps(4000, 6) == [10, 33, 110, 364, 1207, 4000]
    assert snapshot_steps(5, 3) == [5] and snapshot_steps(100, 0) == []
    recorder = RunRecorder(tmp_path, 4, step=0)
    taken, max_iters = [], 1000
    for step in range(1, 601):
        if step == 300:
            max_iters = 600  # a time budget re-planned the run shorter
        if recorder.due(step, max_iters):
            recorder.taken.append(step)
            taken.append(step)
    assert len(taken) == 4 and taken[0] == 10 and taken[-1] == 600 and taken == sorted(set(taken))


def test_a_tiny_run_keeps_snapshots_progress_and_samples(token_data, tmp_path):
    """Catches snapshots that are missing, unloadable or all the same weights, a sample not kept in
    metrics.jsonl, and a progress file that never says the run ended."""
    Trainer(MODEL, config(token_data, tmp_path, snapshots=3)).run()
    run = read_run(tmp_path)
    assert [s.step for s in run.snapshots] == snapshot_steps(60, 3) == [10, 24, 60]
    assert run.state == ENDED and run.progress["step"] == 60
    assert all(r["sample"].startswith("Once upon a time") for r in run.records)
    windows = TokenDataset(token_data / "val.bin", MODEL.block_size).windows(np.arange(0, 320, 32), "cpu")
    losses, stories = [], []
    for snapshot in run.snapshots:
        model, info = load_checkpoint(snapshot.path)
        assert info["metadata"]["step"] == snapshot.step and info["storage"].startswith("int8")
        losses.append(model(*windows)[1].item())
        stories.append("".join(t.text for t in generate(model, Tokenizer(), "Once", temperature=0, max_new_tokens=12)))
    assert losses == sorted(losses, reverse=True) and stories[0] != stories[-1]  # each later one learned more
    frame = curve_frame(run)
    assert list(frame["step"]) == [20, 20, 40, 40, 60, 60] and set(frame["split"]) == {"train", "val"}
    assert samples_html(run).index("Step 60") < samples_html(run).index("Step 20")  # newest first
    assert snapshot_at(tmp_path, 24).step == 24
    with pytest.raises(ValueError, match="there are: 10, 24, 60"):
        snapshot_at(tmp_path, 11)
    assert run_folder(tmp_path / "best") == tmp_path


def test_resuming_keeps_the_snapshots_already_taken(token_data, tmp_path):
    Trainer(MODEL, config(token_data, tmp_path, snapshots=3, max_iters=30)).run()
    assert [s.step for s in read_run(tmp_path).snapshots] == [10, 17, 30]
    Trainer(MODEL, config(token_data, tmp_path, snapshots=3, max_iters=60, resume=True)).run()
    assert [s.step for s in read_run(tmp_path).snapshots] == [10, 17, 30, 60]  # 3 planned for 30 steps, then the end


def test_the_shipped_folder_carries_its_runs_records(tmp_path):
    """ship() copies the run's metrics.jsonl beside the weights, where the Training tab finds it."""
    from tinygpt.evaluation.history import METRICS
    from tinygpt.sharing.ship import ship

    out = tmp_path / "out"
    write_records(out, [RECORD])
    save_checkpoint(GPT(MODEL), out / "best", step=10)
    np.arange(2000, dtype=np.uint16).tofile(tmp_path / "val.bin")
    packed = ship(out / "best", tmp_path / "val.bin", "a test", out=tmp_path / "shipped", stories=1)
    assert packed and (tmp_path / "shipped" / METRICS).read_text() == (out / METRICS).read_text()
    assert run_folder(tmp_path / "shipped") == tmp_path / "shipped"
    assert read_run(tmp_path / "shipped").records[0]["sample"] == RECORD["sample"]
    assert set(packed["metadata"]["shipped_story_loss"]) >= {"all", "before 128", "after 128"}


def test_status_says_how_far_and_how_it_ended(tmp_path):
    write_records(tmp_path, [RECORD])
    write_progress(tmp_path, state=RUNNING, step=15, max_iters=100, tokens_per_sec=1234.0, seconds_left=95)
    text = status_text(read_run(tmp_path), "serving step 10")
    assert "step **15** of 100" in text and "1,234 tokens/s" in text and "1 min 35 s left" in text
    assert "serving step 10" in text
    write_progress(tmp_path, state=STOPPED, step=15, reason="stopped by a signal; continue with --resume")
    assert "**stopped** at step 15 (stopped by a signal" in status_text(read_run(tmp_path))
    frame = curve_frame(replace(read_run(tmp_path), progress={"started": 940.0}))
    assert list(frame["minutes"]) == [1.0, 1.0]


def test_an_open_tab_gets_only_what_changed(tmp_path):
    """Catches a poll that resends the curve and every sample each time a live run rewrites its progress (every
    few seconds): eight open tabs then cost stories 9% of their speed (bench/training_tab.py), 1% once only the
    status line went out."""
    import types

    import gradio as gr

    from tinygpt.playground.training_tab import TrainingView

    out = tmp_path / "out"
    write_records(out, [RECORD])
    write_progress(out, state=RUNNING, step=12, max_iters=100)
    view = TrainingView(types.SimpleNamespace(served=None, default_dir=out / "best"))
    seen, status, curve, samples, note = view.poll(None)
    assert "step **12**" in status and len(curve) == 2 and "Step 10" in samples and "no snapshots" in note
    assert all(part == gr.skip() for part in view.poll(seen))  # nothing new: nothing sent
    time.sleep(0.01)
    write_progress(out, state=RUNNING, step=14, max_iters=100)
    seen, status, curve, samples, note = view.poll(seen)
    assert "step **14**" in status and curve == samples == note == gr.skip()
    write_records(out, [RECORD, {**RECORD, "step": 20}])
    seen, status, curve, samples, note = view.poll(seen)
    assert len(curve) == 4 and "Step 20" in samples and note == gr.skip()
