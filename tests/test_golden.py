"""Golden greedy output (as llama2.c does): a model with weights from a fixed formula, not an RNG, must
produce exactly these tokens. Any change to the model math, the KV-cache path, the decode step or the
tokenizer that alters generation shows up here."""
import torch

from tests.conftest import TINY
from tinygpt import GPT, generate

# 48 tokens that keep changing through the context slide (after 28): nonsense, but exactly reproducible
GOLDEN_IDS = [34100, 49306, 28372, 31427, 4133, 16340, 25679, 14571, 41349, 48060, 37334, 16340, 46392, 2158, 29049,
              20499, 20339, 16759, 42783, 47955, 37326, 31763, 28372, 28372, 12198, 38271, 22924, 41842, 46625, 40640,
              6515, 28372, 28372, 12198, 38271, 22924, 41842, 7648, 18380, 48005, 7451, 7451, 4267, 38271, 37326,
              49329, 49329, 22541]


def hash_uniform(n: int, salt: int) -> torch.Tensor:
    """Deterministic pseudo-random numbers in [-0.5, 0.5) from a formula (the classic shader hash)."""
    x = torch.sin(torch.arange(n, dtype=torch.float64) * 12.9898 + salt * 78.233) * 43758.5453
    return (x - x.floor() - 0.5).float()


def formula_model() -> GPT:
    model = GPT(TINY).eval()
    with torch.no_grad():
        for i, (name, p) in enumerate(model.named_parameters()):
            u = hash_uniform(p.numel(), i).view_as(p)
            if "wpe" in name:  # strong positions: the story keeps changing instead of settling on one token
                p.copy_(u)
            elif p.dim() >= 2:
                p.copy_(u * 0.3)
            elif "ln" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * u)
            else:
                p.copy_(0.05 * u)
    return model


def greedy(model, tokenizer, n=48):  # 4 prompt + 48 > block_size 32: the context slides after 28
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



def test_golden_story_slides_as_a_plain_forward_would(tokenizer):
    """Through the slide too: a cache-free loop that re-reads the same kept tokens (the last 3/4 of the block,
    from position 0) picks the same tokens; catches a slide that keeps the wrong tokens or stale cache slots."""
    from tinygpt.inference.engine import Engine

    model, ids = formula_model(), tokenizer.encode("Once upon a time")
    keep, context, out = Engine(model).keep, list(ids), []
    with torch.no_grad():
        for _ in range(len(GOLDEN_IDS)):
            out.append(int(model(torch.tensor([context]))[0][0, -1].argmax()))
            context.append(out[-1])
            if len(context) > TINY.block_size:
                context = context[-keep:]
    assert out == GOLDEN_IDS
    assert len(set(GOLDEN_IDS[TINY.block_size - len(ids):])) > 10  # the part after the slide varies
