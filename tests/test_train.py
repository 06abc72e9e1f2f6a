import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch

from tinygpt import GPTConfig, load_checkpoint
from tinygpt.training.config import PRESETS, TrainConfig
from tinygpt.training.schedule import lr_at
from tinygpt.training.trainer import Trainer, TrainingError

MODEL = GPTConfig(block_size=32, n_layer=1, n_head=2, n_embd=32, dropout=0.0)


def config(data, out, **kw):
    base = TrainConfig(data_dir=str(data), out_dir=str(out), max_iters=60, eval_interval=20, eval_iters=2,
                       log_interval=5, batch_size=8, tokens_per_step=256, learning_rate=1e-2, min_lr=1e-3,
                       warmup_iters=5, device="cpu", dtype="float32", sample_tokens=10, seed=3)
    return replace(base, **kw)


@pytest.mark.slow
def test_tiny_run_learns_and_writes_everything(token_data, tmp_path):
    Trainer(MODEL, config(token_data, tmp_path)).run()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [20, 40, 60]
    assert records[-1]["val_loss"] < 4.0  # from log(50257) = 10.8 untrained
    assert records[-1]["val_loss"] < records[0]["val_loss"]
    quality = records[-1]["sample_quality"]  # the sample's headline figures ("Once upon a time" names no one)
    assert set(quality) == {"repeated 4-grams", "distinct-2", "ended"} and 0 < quality["distinct-2"] <= 1
    # story loss (the validation stories from their beginnings; the tiny window slides inside them) at every
    # evaluation on a sample, over every story at the end, and kept with the checkpoint
    stories = [r["story_loss"] for r in records]
    assert all(s["tokens after 128"] == 0 and 0 < s["all"] < 11 for s in stories) and stories[-1]["all"] < stories[0]["all"]
    assert records[-1]["story_loss_all"]["tokens"] >= stories[-1]["tokens"]
    assert load_checkpoint(tmp_path / "last")[1]["metadata"]["story_loss_all"] == records[-1]["story_loss_all"]
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    for name in ("best", "last"):
        model, info = load_checkpoint(tmp_path / name)
        assert model.config == MODEL and info["metadata"]["tokens_seen"] > 0
    assert load_checkpoint(tmp_path / "last")[1]["metadata"]["step"] == 60


def test_lr_schedule_shape():
    lrs = [lr_at(s, 1.0, 0.1, warmup_iters=10, decay_iters=100) for s in range(120)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # linear warmup to the peak
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[9:99], lrs[10:100]))  # cosine decay
    assert lrs[99] == pytest.approx(0.1) and lrs[119] == pytest.approx(0.1)  # ends at min_lr
    assert lr_at(54, 1.0, 0.1, 10, 100) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 45 / 90)))


def test_min_lr_above_learning_rate_is_refused():
    with pytest.raises(ValueError, match="min-lr"):
        TrainConfig(learning_rate=1e-4, min_lr=1e-3)


@pytest.mark.slow
def test_lr_steps_once_per_optimizer_step(token_data, tmp_path):
    cfg = config(token_data, tmp_path, max_iters=6, eval_interval=100, tokens_per_step=4 * 256, sample_tokens=0)
    trainer = Trainer(MODEL, cfg)
    assert trainer.accum == 4
    trainer.run()
    assert trainer.step == 6
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(trainer.lr(5))


def weights(path):
    return load_checkpoint(path)[0].state_dict()


@pytest.mark.slow
def test_resume_matches_straight_run(token_data, tmp_path):
    model = replace(MODEL, dropout=0.1)  # dropout too: its randomness must resume exactly
    kw = dict(eval_interval=4, lr_decay_iters=16, sample_tokens=0)
    Trainer(model, config(token_data, tmp_path / "a", max_iters=8, **kw)).run()
    Trainer(model, config(token_data, tmp_path / "a", max_iters=16, resume=True, **kw)).run()
    Trainer(model, config(token_data, tmp_path / "b", max_iters=16, **kw)).run()
    a, b = weights(tmp_path / "a" / "last"), weights(tmp_path / "b" / "last")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    steps = [json.loads(line)["step"] for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [4, 8, 12, 16]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(token_data, tmp_path):
    trainer = Trainer(MODEL, config(token_data, tmp_path, eval_interval=4, sample_tokens=0))
    step = trainer.train_step

    def poisoned():  # plant a NaN in the weights after step 6: the next real forward pass gives NaN
        if trainer.step == 6:
            with torch.no_grad():
                trainer.model.transformer.wpe.weight[0, 0] = float("nan")
        return step()

    trainer.train_step = poisoned
    with pytest.raises(TrainingError, match="loss is nan at step 7.*untouched"):
        trainer.run()
    model, info = load_checkpoint(tmp_path / "last")  # refuses NaN weights, so this proves it is clean
    assert info["metadata"]["step"] == 4


@pytest.mark.slow
def test_sigterm_mid_step_saves_a_loadable_last_and_exits_promptly(token_data, tmp_path):
    """Catches a stop that waits for the step to end (here ~10 s of micro-batches) or runs an eval on the way out."""
    cmd = [sys.executable, "train.py", "--data-dir", str(token_data), "--out-dir", str(tmp_path),
           "--max-iters", "100000", "--eval-interval", "100000", "--eval-iters", "500", "--batch-size", "4",
           "--tokens-per-step", str(4 * 32 * 1000), "--block-size", "32", "--n-layer", "1", "--n-head", "2",
           "--n-embd", "32", "--device", "cpu", "--log-interval", "1", "--sample-tokens", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    deadline = time.time() + 120
    out = ""
    while "loss=" not in out and time.time() < deadline:  # one step done, the next under way
        out += proc.stdout.read(1)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=60)
    took = time.monotonic() - sent
    assert proc.returncode == 0, out + rest
    assert took < 4, f"took {took:.1f} s to stop"
    assert "continue with --resume" in rest and "train " not in rest  # no eval record was logged
    model, info = load_checkpoint(tmp_path / "last")
    assert info["metadata"]["step"] == 1 and info["metadata"]["val_loss"] is None  # the dropped step is redone
    assert (tmp_path / "last" / "trainer_state.json").exists()


@pytest.mark.slow
def test_torchrun_two_processes_match_one(token_data, tmp_path):
    args = ["train.py", "--data-dir", str(token_data), "--max-iters", "6", "--eval-interval", "6",
            "--eval-iters", "2", "--batch-size", "4", "--tokens-per-step", "256", "--block-size", "32",
            "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--dropout", "0", "--device", "cpu",
            "--dtype", "float32", "--sample-tokens", "0", "--seed", "5", "--learning-rate", "1e-2", "--warmup-iters", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, *args, "--out-dir", str(tmp_path / "one")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert single.returncode == 0, single.stderr
    multi = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                            *args, "--out-dir", str(tmp_path / "two")], capture_output=True, text=True, env=env,
                           timeout=300)
    assert multi.returncode == 0, multi.stderr[-3000:]
    assert "micro-batches of 4 x 32 per step on 2 process(es) = 256 tokens" in multi.stderr
    one, two = (json.loads((tmp_path / d / "metrics.jsonl").read_text().splitlines()[-1]) for d in ("one", "two"))
    assert one["step"] == two["step"] == 6
    assert abs(one["val_loss"] - two["val_loss"]) < 1e-3 and one["val_loss"] < 10.0
    a, b = weights(tmp_path / "one" / "last"), weights(tmp_path / "two" / "last")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


@pytest.mark.slow
def test_torchrun_rank0_failure_stops_every_rank(token_data, tmp_path):
    """Rank 0 fails while it checkpoints and logs (loss.png cannot be written: a folder is in the way): both
    processes must exit non-zero promptly with the reason, not leave rank 1 waiting in a collective."""
    out = tmp_path / "out"
    (out / "loss.png").mkdir(parents=True)
    args = ["train.py", "--data-dir", str(token_data), "--out-dir", str(out), "--max-iters", "8", "--eval-interval",
            "4", "--eval-iters", "1", "--batch-size", "4", "--tokens-per-step", "256", "--block-size", "32",
            "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--device", "cpu", "--dtype", "float32",
            "--sample-tokens", "0"]
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert proc.returncode != 0
    assert time.time() - start < 30, proc.stderr[-2000:]
    assert "loss.png" in proc.stderr and "rank 0 failed at step 4" in proc.stderr, proc.stderr[-3000:]


def test_resume_with_nothing_saved_says_so(token_data, tmp_path):
    from tinygpt.model.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="nothing to resume: .*last holds no checkpoint"):
        Trainer(MODEL, config(token_data, tmp_path / "fresh", resume=True))


def test_a_global_batch_that_is_not_whole_micro_batches_is_refused():
    """Catches tokens_per_step silently rounded to a different global batch (1000 -> 1024 here)."""
    cfg = TrainConfig(batch_size=8, tokens_per_step=1000)
    with pytest.raises(ValueError, match="not a whole number of micro-batches .* 8 x 32 x 1 = 256 .* use 768 or 1024"):
        cfg.grad_accum(32)
    assert TrainConfig(batch_size=8, tokens_per_step=1024).grad_accum(32) == 4
    assert TrainConfig(batch_size=8, tokens_per_step=1024).grad_accum(32, world_size=2) == 2
    with pytest.raises(ValueError, match="micro-batches"):
        TrainConfig(batch_size=8, tokens_per_step=128).grad_accum(32)  # less than one micro-batch


def test_flags_override_the_preset_and_the_preset_the_defaults():
    import train

    model, cfg = train.parse(["--preset", "cpu", "--n-layer", "2", "--learning-rate", "0.01"])
    preset_model, preset_cfg = PRESETS["cpu"]
    assert model.n_layer == 2 and model.n_embd == preset_model.n_embd != GPTConfig().n_embd
    assert cfg.learning_rate == 0.01 and cfg.batch_size == preset_cfg.batch_size != TrainConfig().batch_size
    assert cfg.time_budget == preset_cfg.time_budget and PRESETS["cpu"][1].learning_rate != 0.01  # preset untouched


def test_weight_decay_applies_to_matrices_only(tiny_model):
    from tinygpt.training.optim import make_optimizer

    opt = make_optimizer(tiny_model, 0.1, 1e-3, (0.9, 0.95), "cpu")
    decay, no_decay = ({id(p) for p in g["params"]} for g in opt.param_groups)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    names = {id(p): n for n, p in tiny_model.named_parameters()}  # the tied head/embedding appears once
    assert {names[i] for i in decay} == {n for n, p in tiny_model.named_parameters() if p.dim() == 2}
    assert all(n.endswith("bias") or ".ln" in n or "ln_f" in n for n in (names[i] for i in no_decay))
    assert len(decay) + len(no_decay) == len(list(tiny_model.parameters()))
