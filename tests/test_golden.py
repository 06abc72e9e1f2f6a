"""Golden greedy output (as llama2.c does): a model with weights from a fixed formula, not an RNG, must
produce exactly these tokens. Any change to the model math, the KV-cache path, the decode step or the
tokenizer that alters generation shows up here."""
import torch

from tests.conftest import TINY
from tinygpt import GPT, generate

# "counter" x4, " beet" x3, " anonym" x4, " vegan" x29: nonsense, but exactly reproducible
GOLDEN_IDS = [24588, 24588, 24588, 24588, 25679, 25679, 25679, 14571, 14571, 14571, 14571] + [15169] * 29


def hash_uniform(n: int, salt: int) -> torch.Tensor:
    """Deterministic pseudo-random numbers in [-0.5, 0.5) from a formula (the classic shader hash)."""
    x = torch.sin(torch.arange(n, dtype=torch.float64) * 12.9898 + salt * 78.233) * 43758.5453
    return (x - x.floor() - 0.5).float()


def formula_model() -> GPT:
    model = GPT(TINY).eval()
    with torch.no_grad():
        for i, (name, p) in enumerate(model.named_parameters()):
            u = hash_uniform(p.numel(), i).view_as(p)
            if p.dim() >= 2:
                p.copy_(u * 0.3)
            elif "ln" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * u)
            else:
                p.copy_(0.05 * u)
    return model


def greedy(model, tokenizer, n=40):  # 4 prompt + 40 > block_size 32: the context slides
    return [t.id for t in generate(model, tokenizer, "Once upon a time", max_new_tokens=n, temperature=0,
                                   stop_at_eot=False)]


def test_golden_greedy_story(tokenizer):
    ids = greedy(formula_model(), tokenizer)
    assert ids == GOLDEN_IDS, (ids, tokenizer.decode(ids))


def test_golden_story_through_the_full_forward(tokenizer):
    """Until the context slides, plain full forward passes (no cache) give the same tokens."""
    model, ids = formula_model(), tokenizer.encode("Once upon a time")
    n = TINY.block_size - len(ids)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0][0, -1].argmax()))
    assert ids[-n:] == GOLDEN_IDS[:n]

