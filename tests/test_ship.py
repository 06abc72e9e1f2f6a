"""The model that ships with the repo: int8 storage, packing (tinygpt.sharing.ship), and the app's fallback to it."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import TINY
from tinygpt import GPT, load_checkpoint, save_checkpoint
from tinygpt.data.dataloader import TokenDataset
from tinygpt.evaluation.data_loss import loss_over_all
from tinygpt.model.checkpoint import SHIPPED_MODEL
from tinygpt.playground.registry import candidates
from tinygpt.sharing.ship import ship


def test_int8_checkpoint_is_small_and_loads_close_to_the_original(tmp_path):
    """Catches scales applied on the wrong axis (logits would be garbage) or matrices stored in full."""
    torch.manual_seed(0)
    model = GPT(TINY).eval()
    full = save_checkpoint(model, tmp_path / "full")
    small = save_checkpoint(model, tmp_path / "int8", int8=True)
    size = lambda d: (d / "model.safetensors").stat().st_size  # noqa: E731
    assert size(small) < 0.3 * size(full)
    loaded, info = load_checkpoint(small)
    assert info["storage"].startswith("int8")
    x = torch.randint(0, 50257, (2, 16))
    a, b = model(x)[0], loaded(x)[0]
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.9
    assert (a - b).abs().max() < 0.05 * a.abs().max()


def test_ship_records_the_loss_of_what_loading_gives(token_data, tmp_path):
    torch.manual_seed(0)
    trained = save_checkpoint(GPT(TINY), tmp_path / "best", step=3, val_loss=9.0)
    out = tmp_path / "story-model"
    info = ship(trained, token_data / "val.bin", recipe="a test recipe", out=out, stories=3)
    packed, saved = load_checkpoint(out)
    # scored independently: the full logits and F.cross_entropy, not the chunked loss ship() scores with
    total = count = 0
    with torch.no_grad():
        for x, y in TokenDataset(token_data / "val.bin", TINY.block_size).all_windows(8, "cpu"):
            logits = packed(x)[0]
            total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-1, reduction="sum").item()
            count += int((y >= 0).sum())
    assert saved["metadata"]["shipped_val_loss"] == pytest.approx(total / count, abs=1e-4)
    assert saved["metadata"]["recipe"] == "a test recipe" and saved["metadata"]["step"] == 3
    assert "directory" not in json.loads((out / "config.json").read_text())  # no temporary path recorded
    quality = saved["metadata"]["story_quality"]  # what the card and the page show of its stories
    assert quality["stories"] == 3 and {"repeated 4-grams", "distinct-2", "ended", "name kept"} <= set(quality)
    from tinygpt.sharing.model_card import quality_line
    assert f"distinct word pairs {quality['distinct-2']:.0%}" in quality_line(quality)
    assert quality_line(quality).startswith("3 stories of up to 300 tokens (the playground's defaults)")
    assert "not measured" in quality_line(None)
    assert (out / "model.safetensors").stat().st_size < info["size_bytes"] <= 10_000_000


def test_ship_refuses_an_oversized_model_and_keeps_the_old_one(token_data, tmp_path, monkeypatch):
    import tinygpt.sharing.ship as ship_mod

    torch.manual_seed(0)
    trained = save_checkpoint(GPT(TINY), tmp_path / "best", step=3)
    out = tmp_path / "story-model"
    ship(trained, token_data / "val.bin", recipe="first", out=out, stories=1)
    monkeypatch.setattr(ship_mod, "MAX_BYTES", 1000)
    with pytest.raises(ValueError, match="over the .* Git LFS"):
        ship(trained, token_data / "val.bin", recipe="second", out=out, stories=1)
    assert json.loads((out / "config.json").read_text())["metadata"]["recipe"] == "first"


def test_the_app_falls_back_to_the_shipped_model_last(tmp_path, monkeypatch):
    """Order: --checkpoint, TINYGPT_CHECKPOINT, out/best, TINYGPT_HUB_REPO, then the shipped model (app.py
    reads the flags and the environment; tinygpt.playground.registry decides)."""
    import app

    monkeypatch.chdir(tmp_path)
    for var in ("TINYGPT_CHECKPOINT", "TINYGPT_HUB_REPO"):
        monkeypatch.delenv(var, raising=False)
    source = lambda *argv: candidates(app.serve_config(app.parse_args(list(argv))))  # noqa: E731
    shipped = (str(SHIPPED_MODEL),) if (SHIPPED_MODEL / "config.json").exists() else ()
    assert source() == shipped
    monkeypatch.setenv("TINYGPT_HUB_REPO", "user/model")
    assert source() == ("user/model", *shipped)
    save_checkpoint(GPT(TINY), tmp_path / "out" / "best")
    assert source() == ("out/best", "user/model", *shipped)
    monkeypatch.setenv("TINYGPT_CHECKPOINT", "env/ckpt")
    assert source() == ("env/ckpt",)  # named explicitly: nothing else is served in its place
    assert source("--checkpoint", "flag/ckpt") == ("flag/ckpt",)


VALID = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinystories" / "valid.txt"


@pytest.mark.skipif(not (SHIPPED_MODEL / "config.json").exists(), reason="no shipped model in this checkout")
def test_the_shipped_model_is_small_enough_for_a_space():
    assert sum(f.stat().st_size for f in SHIPPED_MODEL.iterdir()) <= 10_000_000
    _, info = load_checkpoint(SHIPPED_MODEL)
    assert info["metadata"]["recipe"] and info["metadata"]["shipped_val_loss"] <= 2.4


@pytest.mark.skipif(not (SHIPPED_MODEL / "config.json").exists() or not VALID.exists(),
                    reason="needs the shipped model and ../shared/data/tinystories/valid.txt")
@pytest.mark.slow
def test_the_shipped_models_recorded_loss_is_what_it_scores(tmp_path):
    """Catches a stale or hand-edited figure: the loss in config.json is recomputed from valid.txt."""
    from tinygpt.data.prepare import PrepareConfig, prepare

    prepare(PrepareConfig(train_files=[str(VALID)], val_files=[str(VALID)], out_dir=str(tmp_path), num_proc=1))
    model, info = load_checkpoint(SHIPPED_MODEL)
    data = TokenDataset(tmp_path / "val.bin", model.config.block_size)
    assert len(data) - 1 == info["metadata"]["shipped_val_tokens"]
    assert loss_over_all(model, data) == pytest.approx(info["metadata"]["shipped_val_loss"], abs=2e-3)
