import json

import pytest
import torch

from tinygpt import CheckpointError, from_pretrained, load_checkpoint, save_checkpoint


@pytest.fixture
def ckpt(tiny_model, tmp_path):
    return save_checkpoint(tiny_model, tmp_path / "ck", step=5, val_loss=3.2)


def test_roundtrip_gives_identical_logits(tiny_model, ckpt):
    model, info = load_checkpoint(ckpt)
    x = torch.randint(0, 50257, (2, 16))
    with torch.no_grad():
        assert torch.equal(tiny_model(x)[0], model(x)[0])
    assert info["metadata"] == {"step": 5, "val_loss": 3.2}
    assert info["tokenizer"]["name"] == "gpt2"
    assert model.lm_head.weight is model.transformer.wte.weight


def test_save_replaces_atomically_and_leaves_no_temporaries(tiny_model, ckpt):
    save_checkpoint(tiny_model, ckpt, step=6)
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["ck"]
    assert json.loads((ckpt / "config.json").read_text())["metadata"]["step"] == 6


def test_unserialisable_metadata_writes_nothing(tiny_model, tmp_path):
    with pytest.raises(TypeError):
        save_checkpoint(tiny_model, tmp_path / "x", bad=object())
    assert not list(tmp_path.iterdir())


def test_missing_files_are_named(ckpt):
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors: missing"):
        load_checkpoint(ckpt)
    (ckpt / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json: missing"):
        load_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match="nowhere: no such checkpoint directory .*from_pretrained"):
        load_checkpoint(ckpt.parent / "nowhere")
    with pytest.raises(CheckpointError, match="nowhere: no such checkpoint directory, and not a Hub repo id"):
        from_pretrained(ckpt.parent / "nowhere")


def test_a_repo_id_is_fetched_from_the_hub(monkeypatch, ckpt):
    """from_pretrained('user/name') downloads (here: a stand-in for the Hub download); load_checkpoint never does."""
    import tinygpt.sharing.hub

    asked = []
    monkeypatch.setattr(tinygpt.sharing.hub, "download_checkpoint", lambda repo: asked.append(repo) or ckpt)
    model, info = from_pretrained("someone/tiny-stories")
    assert asked == ["someone/tiny-stories"] and info["directory"] == str(ckpt)
    with pytest.raises(CheckpointError):
        load_checkpoint("someone/tiny-stories")
    assert asked == ["someone/tiny-stories"]


def test_truncated_weights_are_refused(ckpt):
    path = ckpt / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="model.safetensors: unreadable.*truncated or corrupt"):
        load_checkpoint(ckpt)


def test_corrupt_config_is_refused(ckpt):
    (ckpt / "config.json").write_text('{"model": {"n_layer": 2,')
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        load_checkpoint(ckpt)


def test_weights_that_do_not_fit_the_config_are_refused(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["model"]["n_embd"] = 64
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(ckpt)
    cfg["model"]["n_layer"] = 3
    cfg["model"]["n_embd"] = 32
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(ckpt)


def test_unknown_config_field_is_refused(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["model"]["n_experts"] = 8
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="bad model config"):
        load_checkpoint(ckpt)


def test_checkpoint_files_follow_the_umask(tiny_model, tmp_path):
    """Catches 0600 files (safetensors' own writer, temporary names) that other users cannot read."""
    import os

    old = os.umask(0o022)
    try:
        out = save_checkpoint(tiny_model, tmp_path / "best")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o755
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == {"config.json": 0o644,
                                                                          "model.safetensors": 0o644}
