"""Benchmarks that cannot rot: every script in bench/ runs once on a tiny model with the smallest settings (seconds
each), as a user would start it, and must exit 0 and print its figures. bench/serve.py once joined the queue
with six values for the page's eight inputs: every request failed and it still exited 0, so the figures in
bench/RESULTS.md could not be reproduced from main, and nothing said so."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY, simple_stories
from tinygpt import GPT, GPTConfig, save_checkpoint

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    return str(save_checkpoint(GPT(TINY), tmp_path_factory.mktemp("bench") / "tiny"))


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """Tiny, but as wide as the one-pass step needs (n_embd a multiple of 64): its serving copy takes that step."""
    torch.manual_seed(0)
    config = GPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=64, dropout=0.0)
    return str(save_checkpoint(GPT(config), tmp_path_factory.mktemp("bench") / "wide"))


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    """A folder with train.txt and valid.txt as shared/data/tinystories has them."""
    root = tmp_path_factory.mktemp("texts")
    for name, n, seed in (("train.txt", 200, 0), ("valid.txt", 20, 1)):
        (root / name).write_text("".join(s + "\n<|endoftext|>\n" for s in simple_stories(n, seed)))
    return root


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    """One kernel and Inductor cache for the benches that compile the tiny model (the first pays)."""
    root = tmp_path_factory.mktemp("caches")
    return {"XDG_CACHE_HOME": str(root / "xdg"), "TORCHINDUCTOR_CACHE_DIR": str(root / "inductor")}


def bench(script: str, *args: str, env: dict | None = None, timeout: float = 600) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_serve(wide, caches):
    out = bench("serve.py", "--checkpoint", wide, "--users", "1", "2", "--max-new-tokens", "8", "--repeats", "1",
                "--concurrency", "2", env=caches)
    assert "failed 0" in out and "N= 2:" in out and "engine alone" in out


def test_soak_sixteen_visitors(wide, caches):
    """Issue 32's soak at small scale: 16 visitors writing 200-token stories back to back for 20 s; the tiny
    model's window is 32 tokens, so every story slides about eight times, and rows leave and join all the time.
    bench/soak.py exits 1 if the server died or any story failed. On the fast path of an x86 CPU, the one-pass
    step (the compiled step's own schedule that broke is tests/test_batching.py's)."""
    out = bench("soak.py", "--checkpoint", wide, "--users", "16", "--duration", "20s", "--every", "10",
                "--concurrency", "16", env=caches)
    assert ", failed 0;" in out and "server RSS" in out


def test_training_tab(tiny, caches):
    out = bench("training_tab.py", "--checkpoint", tiny, "--users", "1", "--tabs", "2", "--seconds", "4",
                "--rounds", "1", "--max-new-tokens", "16", "--no-compile", env=caches)
    assert "open / closed" in out and "answers with news" in out


def test_cold_start(wide, caches):  # the fast path a first start reaches on an x86 CPU: the one-pass step
    out = bench("cold_start.py", "--checkpoint", wide, "--runs", "1", env=caches)
    assert "cold: page answers after" in out


def test_batching(tiny):
    assert "identical" in bench("batching.py", "--checkpoint", tiny, "--streams", "2", "--max-new-tokens", "8")


def test_cpu_kernels(tiny):
    assert "ms per step" in bench("cpu_kernels.py", "--checkpoint", tiny, "--batch", "1", "--steps", "2", "--reps",
                                  "1", "--position", "16")


def test_generate(tmp_path):
    torch.manual_seed(0)  # a context of 128: transformers' generate, compared, cannot slide past it
    model = GPT(GPTConfig(block_size=128, n_layer=2, n_head=2, n_embd=64, dropout=0.0))  # wide enough: one pass
    out = bench("generate.py", "--checkpoint", str(save_checkpoint(model, tmp_path / "m")), "--reps", "1",
                "--stories", "2", "--no-compile")  # compiled steps: tests/test_warmup.py, tests/test_batching.py
    assert "default_tok_s:" in out and "one pass " in out and "the modules' eager " in out


def test_generate_ab(tiny):
    """Both sides' workers start, alternate and answer; HEAD against itself (the plumbing, not the speed)."""
    out = bench("generate_ab.py", "--baseline", "HEAD", "--rounds", "2", "--new-tokens", "4", "--checkpoint", tiny,
                "--precision", "fp32", "--no-compile")
    assert "round 2: this " in out and "baseline HEAD" in out and "ratio: " in out


def test_profile_step(wide, caches):
    out = bench("profile_step.py", "--checkpoint", wide, "--batch", "1", "2", "--steps", "3", "--top", "5",
                "--no-compile", env=caches)  # the compiled step's figure: bench/generate.py's smoke compiles
    assert "µs/call" in out and "batch 2:" in out and "one-pass step: " in out and "the blocks " in out


def test_inspect_token(tiny):
    assert "ms" in bench("inspect_token.py", "--checkpoint", tiny, "--reps", "1")


def test_branch(tiny):
    assert "of the whole story" in bench("branch.py", "--checkpoint", tiny, "--tokens", "40", "--reps", "1")


def test_story_quality(tiny, texts, token_data):
    for name in ("copies.safetensors", "copies.json"):  # the model carries its training text's copy index
        shutil.copyfile(token_data / name, Path(tiny) / name)
    out = bench("story_quality.py", tiny, "--stories", "2", "--show", "1", "--train-text", str(texts / "train.txt"),
                "--valid-text", str(texts / "valid.txt"))
    assert "repeated 4-grams" in out and "story loss over valid.txt" in out
    assert "copied share: " in out and "by the shortest span counted: 12 tokens" in out


def test_prepare(texts):
    assert "tokens/s" in bench("prepare.py", "--data-dir", str(texts), "--repeats", "1")


def test_train_and_cpu_recipe(token_data, tmp_path):
    assert "tokens/s" in bench("train.py", "--data-dir", str(token_data), "--steps", "2", "--warmup", "1",
                            "--batch-size", "2", "--no-compile", "--model-shape", "2,2,64")
    out = bench("cpu_recipe.py", "--budget", "10s", "--only", "window-128", "--data-dir", str(token_data),
                "--results", str(tmp_path / "results.jsonl"))
    assert "| window-128" in out and (tmp_path / "results.jsonl").exists()


def test_every_bench_script_has_a_smoke_run():
    """Catches a new bench/ script without a run here."""
    covered = {"serve", "soak", "cold_start", "batching", "cpu_kernels", "generate", "inspect_token",
               "story_quality", "prepare", "train", "cpu_recipe", "training_tab", "profile_step", "branch", "generate_ab"}
    scripts = {p.stem for p in (ROOT / "bench").glob("*.py")} - {"visitor"}  # visitor.py: a module the others use
    assert scripts == covered
