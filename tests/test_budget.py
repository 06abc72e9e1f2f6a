"""--time-budget: parsing, the step plan, and a real run that ends on time with the learning rate decayed."""
import json
import time
from dataclasses import replace

import pytest
from tqdm import tqdm

from tests.test_train import MODEL, config
from tinygpt.training.budget import TimeBudget, parse_duration
from tinygpt.training.config import TrainConfig
from tinygpt.training.trainer import Trainer


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("60m", 3600), ("2h", 7200), ("1.5h", 5400), ("45", 45)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "soon", "10x", "-5m", "0s", "m"])
def test_bad_durations_say_the_format(bad):
    with pytest.raises(ValueError, match="like 90s, 60m or 2h"):
        parse_duration(bad)
    if bad:
        with pytest.raises(ValueError, match="time-budget"):
            TrainConfig(time_budget=bad)


def test_steps_that_fit_leave_room_for_evals_and_the_final_one():
    budget = TimeBudget(100.0, start=time.monotonic(), eval_seconds=2.0, final_seconds=10.0)
    # 90 s of room; each step costs 0.5 s plus a 2 s eval every 10 steps = 0.7 s: 128 steps
    assert budget.steps_that_fit(0.5, eval_every=10) in (127, 128)


@pytest.mark.slow
def test_a_budgeted_run_ends_on_time_with_a_final_eval(token_data, tmp_path):
    """Catches a budget that is ignored (max_iters 100000 would run for minutes), an LR that does not decay to
    the end, or a run that ends without its final evaluation and checkpoint."""
    cfg = config(token_data, tmp_path, max_iters=100_000, eval_interval=50, time_budget="12s")
    # one micro-batch a step (256 tokens): a slow, shared CI CPU (1.2 steps/s at 1,024 tokens) still fits dozens
    started = time.monotonic()
    trainer = Trainer(MODEL, cfg)
    trainer.run()
    took = time.monotonic() - started
    assert 8 < took < 14, took
    assert 10 < trainer.step == trainer.max_iters < 100_000
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(cfg.min_lr, rel=0.05)  # decayed to the end
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == trainer.step and last["val_loss_all"] < 8  # untrained: ln(50257) = 10.8; slow CPUs get ~40 steps


def test_a_long_cpu_run_without_budget_says_how_long_and_points_at_the_cpu_preset(token_data, tmp_path, caplog):
    cfg = replace(config(token_data, tmp_path, max_iters=1_000_000, eval_interval=1_000_000, sample_tokens=0),
                  tokens_per_step=8 * 32 * 8)
    trainer = Trainer(MODEL, cfg)
    with caplog.at_level("WARNING"):
        trainer._plan(step_seconds=0.5, bar=tqdm(disable=True))  # what the loop calls after its first steps
    assert "1000000 steps take about 138h53m" in caplog.text and "--preset cpu --time-budget 60m" in caplog.text
