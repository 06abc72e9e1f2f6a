"""--time-budget: parsing, the step plan, and a real run that ends on time with the learning rate decayed."""
import json
from dataclasses import replace

import numpy as np
import pytest
from tqdm import tqdm

from tests.test_train import MODEL, config
from tinygpt.evaluation.data_loss import STORY_SAMPLE
from tinygpt.evaluation.story_loss import forward_positions
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
    budget = TimeBudget(100.0, clock=lambda: 0.0, eval_seconds=2.0, final_seconds=10.0)
    # 90 s of room; each step costs 0.5 s plus a 2 s eval every 10 steps = 0.7 s: 128 steps
    assert budget.steps_that_fit(0.5, eval_every=10) == 128


class FakeClock:
    """Seconds that pass only when the test says: a step costs STEP, an evaluation EVAL (the final one in
    proportion to the tokens it scores), whatever the machine's load."""

    STEP, EVAL = 0.3, 0.5

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.slow
def test_a_budgeted_run_ends_on_time_with_a_final_eval(token_data, tmp_path):
    """Catches a budget that is ignored (max_iters 100000), a plan that overruns the deadline or stops far short
    of it, an LR that does not decay to the end, or a run that ends without its final evaluation and checkpoint."""
    cfg = config(token_data, tmp_path, max_iters=100_000, eval_interval=10, time_budget="12s", sample_tokens=0)
    clock = FakeClock()
    trainer = Trainer(MODEL, cfg, clock=clock)
    step, log = trainer.train_step, trainer.checkpoint_and_log
    # what an evaluation runs forward: the fixed batches and story loss on a sample of stories; the final one
    # also every validation token and every story
    val, T = np.asarray(trainer.val_data.data), MODEL.block_size
    eval_tokens = 2 * cfg.eval_iters * cfg.batch_size * T + forward_positions(val, T, STORY_SAMPLE)
    final_extra = len(trainer.val_data) + forward_positions(val, T)

    def timed_step():
        clock.now += clock.STEP
        return step()

    def timed_log(rate, final=False):
        clock.now += clock.EVAL * (1 + final_extra / eval_tokens if final else 1)
        return log(rate, final)

    trainer.train_step, trainer.checkpoint_and_log = timed_step, timed_log
    trainer.run()
    assert 12 - clock.STEP - clock.EVAL <= clock.now <= 12  # on time: not late, and no step left unused
    assert trainer.step == trainer.max_iters < 100_000
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(cfg.min_lr, rel=0.05)  # decayed to the end
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == trainer.step and last["val_loss_all"] < 8  # untrained: ln(50257) = 10.8


def test_a_long_cpu_run_without_budget_says_how_long_and_points_at_the_cpu_preset(token_data, tmp_path, caplog):
    cfg = replace(config(token_data, tmp_path, max_iters=1_000_000, eval_interval=1_000_000, sample_tokens=0),
                  tokens_per_step=8 * 32 * 8)
    trainer = Trainer(MODEL, cfg)
    with caplog.at_level("WARNING"):
        trainer._plan(step_seconds=0.5, bar=tqdm(disable=True))  # what the loop calls after its first steps
    assert "1000000 steps take about 138h53m" in caplog.text and "--preset cpu --time-budget 60m" in caplog.text
