"""train.py --half-window-frac: windows of half the block first, the whole window last (training.windows)."""
import pytest
import torch

from tinygpt.data.dataloader import TokenDataset
from tinygpt.training.config import TrainConfig
from tinygpt.training.trainer import Trainer
from tinygpt.training.windows import WindowSchedule

from .test_train import MODEL, config, weights


def test_half_windows_until_the_share_then_the_whole_window_kept():
    """Catches a switch at the wrong step, or one undone when a time budget re-plans the run longer."""
    schedule = WindowSchedule(block_size=256, half_frac=0.6)
    assert [schedule.window(step, 10) for step in (0, 5)] == [128, 128]
    assert schedule.window(6, 10) == 256 and schedule.full_from == 6
    assert schedule.window(7, 100) == 256  # re-planned to 100 steps: the whole window stays
    assert WindowSchedule(256, 0.0).window(0, 10) == 256
    with pytest.raises(ValueError, match="--half-window-frac must be in"):
        TrainConfig(half_window_frac=1.0)


def test_a_step_reads_the_same_tokens_in_half_windows_and_the_rest_follow(token_data, tmp_path, monkeypatch):
    """Catches half windows that change a step's tokens (rows not doubled), windows that never grow back, and
    unread positions left at their random start (an evaluation of the whole window would read noise there)."""
    shapes, read = [], TokenDataset.windows

    def windows(self, starts, device="cpu", length=None):
        x, y = read(self, starts, device, length)
        shapes.append(tuple(x.shape))
        return x, y

    monkeypatch.setattr(TokenDataset, "windows", windows)
    trainer = Trainer(MODEL, config(token_data, tmp_path, max_iters=4, eval_interval=100, sample_tokens=0,
                                    half_window_frac=0.5, ema=0.9))
    T, B = MODEL.block_size, trainer.config.batch_size
    shapes.clear()  # the evaluation's fixed batches
    trainer.train_step()
    trainer.step += 1
    for model in (trainer.model, trainer.ema.model):
        wpe = model.transformer.wpe.weight
        assert torch.equal(wpe[T // 2:], wpe[T // 2 - 1].expand(T // 2, -1))
    trainer.run()
    assert shapes[:4 * trainer.accum] == [(2 * B, T // 2)] * 2 * trainer.accum + [(B, T)] * 2 * trainer.accum


def test_resume_across_the_switch_matches_a_straight_run(token_data, tmp_path, monkeypatch):
    """Catches a resumed run that forgets where its whole windows began (it would read half windows again, or
    switch at another step)."""
    kw = dict(max_iters=12, eval_interval=4, sample_tokens=0, half_window_frac=0.5)  # whole windows from step 6
    Trainer(MODEL, config(token_data, tmp_path / "b", **kw)).run()
    step = Trainer.train_step

    def stop_after_seven(self):  # as a SIGTERM at step 8 would: the run saves last/ and ends
        loss = step(self)
        self.stop.requested = self.step + 1 >= 8
        return loss

    monkeypatch.setattr(Trainer, "train_step", stop_after_seven)
    Trainer(MODEL, config(token_data, tmp_path / "a", **kw)).run()
    monkeypatch.undo()
    resumed = Trainer(MODEL, config(token_data, tmp_path / "a", resume=True, **kw))
    assert resumed.step == 8 and resumed.windows.full_from == 6
    resumed.run()
    a, b = weights(tmp_path / "a" / "last"), weights(tmp_path / "b" / "last")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
