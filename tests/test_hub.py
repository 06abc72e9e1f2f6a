"""Hub sharing through the real huggingface_hub code paths, with no network."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import TINY
from tinygpt import GPT, Tokenizer, generate, save_checkpoint
from tinygpt.sharing.hub import HubError, push
from tinygpt.sharing.model_card import render_model_card

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def run_dir(tmp_path):
    """out/ as train.py leaves it: best/ plus a loss curve beside it."""
    torch.manual_seed(0)
    save_checkpoint(GPT(TINY), tmp_path / "best", step=40, tokens_seen=12345, val_loss=4.2,
                    train_config={"learning_rate": 0.003, "batch_size": 16},
                    story_loss_all={"all": 4.5, "before 128": 4.25, "after 128": 4.75, "tokens after 128": 9})
    (tmp_path / "loss.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    return tmp_path


def offline_env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    return {**env, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home"), **extra}


def test_model_card_has_valid_metadata_and_the_metrics(run_dir):
    card = render_model_card(run_dir / "best", "alice/tiny-stories", has_loss_png=True)
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["license"] == "mit" and meta["datasets"] == ["roneneldan/TinyStories"]
    assert meta["library_name"] == "tinygpt" and "text-generation" in meta["tags"]
    assert "4.2000" in body and "12,345" in body and "| step | 40 |" in body
    assert '"learning_rate": 0.003' in body and "![Training and validation loss](loss.png)" in body
    assert "Once upon a time" in body and "AutoModelForCausalLM" in body and "alice/tiny-stories" in body
    assert "| 4.500 (before 128: 4.250, after: 4.750) |" in body  # story loss, each story from its beginning


def test_push_dry_run_lists_exactly_the_files_and_touches_nothing(run_dir):
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    assert push(run_dir / "best", "alice/tiny", dry_run=True) == ["README.md", "config.json", "loss.png",
                                                                  "model.safetensors"]
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before


@pytest.mark.slow
@pytest.mark.parametrize("token, message", [(None, "not logged in"), ("hf_fake", "cannot reach the Hugging Face Hub")])
def test_push_offline_refuses_with_a_clear_message(run_dir, tmp_path, token, message):
    env = offline_env(tmp_path, **({"HF_TOKEN": token} if token else {}))
    before = sorted(p.name for p in run_dir.rglob("*"))
    r = subprocess.run([sys.executable, "-m", "tinygpt.sharing.hub", "push", str(run_dir / "best"), "--repo", "alice/tiny"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in run_dir.rglob("*")) == before


def test_bad_repo_id_is_refused(run_dir):
    with pytest.raises(HubError, match="USER/NAME"):
        push(run_dir / "best", "no-slash")


@pytest.mark.slow
def test_load_by_repo_id_from_the_hub_cache_offline(run_dir, tmp_path):
    """Lay out the Hub cache as hf_hub_download leaves it, then load by repo id with HF_HUB_OFFLINE=1."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf-home" / "hub" / "models--alice--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(run_dir / "best", repo / "snapshots" / commit)
    code = ("from tinygpt.serving.loading import load_for_serving; m = load_for_serving('alice/tiny', precision='fp32'); "
            "print('loaded', m.num_params, m.info['metadata']['step'])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=offline_env(tmp_path),
                       cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"loaded {GPT(TINY).num_params()} 40" in r.stdout
    r = subprocess.run([sys.executable, "-c", code.replace("alice/tiny", "alice/absent")], capture_output=True,
                       text=True, env=offline_env(tmp_path), cwd=ROOT, timeout=120)
    assert r.returncode != 0 and "could not download 'alice/absent'" in r.stderr


def test_exported_transformers_model_gives_the_same_greedy_story(run_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    from tinygpt import load_checkpoint
    from tinygpt.sharing.export import main as export_main

    assert export_main([str(run_dir / "best"), str(tmp_path / "hf")]) == 0
    model, _ = load_checkpoint(run_dir / "best")
    tok = Tokenizer()
    prompt = tok.encode("Once upon a time")
    ours = [t.id for t in generate(model, tok, prompt, max_new_tokens=20, temperature=0, stop_at_eot=False)]
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=20, min_new_tokens=20, do_sample=False,
                          pad_token_id=50256)
    assert out[0, len(prompt):].tolist() == ours
