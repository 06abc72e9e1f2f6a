"""Shared fixtures: a tiny model config and a tokenizer, so every test runs in seconds on a CPU."""
import pytest
import torch

from tinygpt import GPT, GPTConfig, Tokenizer

TINY = GPTConfig(vocab_size=50257, block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.0)


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    return Tokenizer()


@pytest.fixture
def tiny_model() -> GPT:
    torch.manual_seed(0)
    return GPT(TINY).eval()


@pytest.fixture
def trained_like(tiny_model):
    """Random weights scaled up so logits have a real spread, as a trained model's do."""
    with torch.no_grad():
        for p in tiny_model.parameters():
            if p.dim() == 2:
                p.mul_(5)
    return tiny_model


def simple_stories(n: int, seed: int = 0) -> list[str]:
    """Formulaic little stories: enough structure for a tiny model to learn in seconds."""
    import random

    rng = random.Random(seed)
    names, things = ["Lily", "Tom", "Sam", "Mia", "Ben"], ["ball", "cat", "kite", "cake", "tree", "dog"]
    out = []
    for _ in range(n):
        name, thing = rng.choice(names), rng.choice(things)
        out.append(f"Once upon a time, there was a little girl named {name}. {name} had a red {thing}. "
                   f"One day, {name} played with the {thing} in the park. {name} was very happy. The end.")
    return out


@pytest.fixture(scope="session")
def token_data(tmp_path_factory):
    """A data dir with train.bin / val.bin made by the real prepare step from simple stories."""
    from tinygpt.data.prepare import PrepareConfig, prepare

    root = tmp_path_factory.mktemp("data")
    for name, n, seed in (("train.txt", 400, 0), ("val.txt", 40, 1)):
        (root / name).write_text("".join(s + "\n<|endoftext|>\n" for s in simple_stories(n, seed)))
    out = root / "tokens"
    prepare(PrepareConfig(train_files=[str(root / "train.txt")], val_files=[str(root / "val.txt")],
                          out_dir=str(out), num_proc=1))
    return out
