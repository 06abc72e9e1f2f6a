"""train.py --init-from: a run that starts from saved weights, its window grown."""
import json
from dataclasses import replace

import pytest
import torch

from tinygpt import GPT, load_checkpoint, save_checkpoint
from tinygpt.training.config import TrainConfig
from tinygpt.training.trainer import Trainer
from tinygpt.training.warm_start import grow_window, warm_start

from .conftest import TINY
from .test_train import MODEL, config


def test_a_grown_window_reads_the_old_window_as_before(tiny_model):
    """Catches a grown model that is not the saved one (weights lost, positions shifted or reset): over the old
    window its logits are the old model's; the new positions start as the last trained one."""
    grown = grow_window(tiny_model, 2 * TINY.block_size).eval()
    idx = torch.randint(0, TINY.vocab_size, (2, TINY.block_size))
    torch.testing.assert_close(grown(idx)[0], tiny_model(idx)[0])
    wpe = grown.transformer.wpe.weight
    assert wpe.shape[0] == 2 * TINY.block_size and torch.equal(wpe[-1], tiny_model.transformer.wpe.weight[-1])
    assert grown(torch.randint(0, TINY.vocab_size, (1, 2 * TINY.block_size)))[0].shape[1] == 2 * TINY.block_size
    with pytest.raises(ValueError, match="can grow, not shrink: use --block-size 32 or more"):
        grow_window(tiny_model, 16)


def test_init_from_a_checkpoint_keeps_its_vocabulary_and_takes_the_flags_window(tmp_path):
    torch.manual_seed(0)
    saved = GPT(replace(TINY, kept_tokens=300), torch.arange(1000, 1300))
    save_checkpoint(saved, tmp_path / "saved")
    model = warm_start(tmp_path / "saved", replace(TINY, block_size=64, n_layer=6, dropout=0.1))
    assert model.training and model.config == replace(TINY, kept_tokens=300, block_size=64, dropout=0.1)
    assert torch.equal(model.row_of, saved.row_of)
    with pytest.raises(ValueError, match="--init-from: .*no such checkpoint directory"):
        warm_start(tmp_path / "nothing", TINY)
    with pytest.raises(ValueError, match="--init-from starts a new run and --resume continues one"):
        TrainConfig(init_from="x", resume=True)


@pytest.mark.slow
def test_a_warm_started_run_begins_where_the_saved_model_ended(token_data, tmp_path):
    """Catches --init-from that trains new weights after all (its first evaluation would be ~10.8, an untrained
    model's) or drops the grown window (the saved config would say 32)."""
    Trainer(MODEL, config(token_data, tmp_path / "first", max_iters=40)).run()
    ended = load_checkpoint(tmp_path / "first" / "best")[1]["metadata"]["val_loss"]
    Trainer(replace(MODEL, block_size=64), config(token_data, tmp_path / "second", max_iters=20, eval_interval=10,
                                                  batch_size=4, init_from=str(tmp_path / "first" / "best"))).run()
    first = json.loads((tmp_path / "second" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 10 and first["val_loss"] < ended + 0.3, (first["val_loss"], ended)
    assert load_checkpoint(tmp_path / "second" / "last")[0].config.block_size == 64
