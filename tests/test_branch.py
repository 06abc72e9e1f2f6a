"""Branching a story (tinygpt.inference.branch): the kept tokens stay, the chosen one is at p, the rest is new."""
import pytest
import torch

from tinygpt import GPT

from tinygpt.inference.branch import branch_story, scored_tokens
from tinygpt.inference.engine import Engine
from tinygpt.inference.sampling import SamplingParams
from tinygpt.inference.story import stream_story

from .conftest import TINY

PARAMS = SamplingParams(temperature=0.9, top_k=50, max_new_tokens=70, seed=5, stop_at_eot=False)


@pytest.fixture(scope="module")
def story(tokenizer):
    torch.manual_seed(0)
    model = GPT(TINY).eval()
    with torch.no_grad():  # a real spread of probabilities, as a trained model's
        for w in model.parameters():
            w.mul_(5 if w.dim() == 2 else 1)
    engine = Engine(model)
    return engine, list(stream_story(engine, tokenizer, "Once upon a time", PARAMS))[-1]


def test_scored_tokens_are_what_the_engine_had_for_them(story):
    """Catches scoring with another context than the engine read (70 tokens slide the tiny model's 32-token
    window twice): each token's probability and alternatives as the story was written."""
    engine, snap = story
    given = scored_tokens(engine.model, snap.prompt_ids, list(snap.ids))
    assert [t.id for t in given] == list(snap.ids)
    assert [t.prob for t in given] == pytest.approx(list(snap.probs), rel=1e-4, abs=1e-6)
    alts = [a for t in given for a, _ in t.alternatives]
    assert sum(a == b for a, b in zip(alts, snap.alt_ids)) >= 0.98 * len(alts)  # near-ties may swap


@pytest.mark.parametrize("p", [0, 45])  # 45: after the window slid
def test_a_branch_keeps_the_story_before_p_and_the_chosen_token_at_p(story, tokenizer, p):
    engine, snap = story
    chosen = next(a for a in snap.alt_ids[p * snap.width:][:snap.width] if a != snap.ids[p])  # another alternative
    branch = list(branch_story(engine, tokenizer, "Once upon a time", list(snap.ids[:p]), chosen,
                               PARAMS))
    last = branch[-1]
    assert list(last.ids[:p]) == list(snap.ids[:p]) and last.ids[p] == chosen and last.n_tokens == 70
    assert last.text.startswith(snap.text[:snap.ends[p - 1] if p else snap.start])  # byte for byte
    assert list(last.probs[:p]) == pytest.approx(list(snap.probs[:p]), rel=1e-4, abs=1e-6)
    assert branch[0].n_tokens == p + 1  # the given tokens come in one snapshot, not written token by token
    again = list(branch_story(engine, tokenizer, "Once upon a time", list(snap.ids[:p]), chosen,
                              PARAMS))[-1]
    assert again.text == last.text  # a branch is as reproducible as a story
    # a branch of the branch
    twig = list(branch_story(engine, tokenizer, "Once upon a time", list(last.ids[:p + 5]),
                             last.alt_ids[(p + 5) * last.width + 1], PARAMS))[-1]
    assert list(twig.ids[:p + 5]) == list(last.ids[:p + 5]) and twig.ids[p + 5] == last.alt_ids[(p + 5) * last.width + 1]


def test_bad_branches_get_clear_errors(story, tokenizer):
    engine, snap = story
    for kept, chosen, message in [(list(snap.ids[:5]), 60000, r"token ids must be integers in \[0, 50257\), got 60000"),
                                  ([1, "x"], 3, "ids must be a list of the story's token ids"),
                                  (list(range(70)), 3, r"the branch point \(70\) must come before the story's end")]:
        with pytest.raises(ValueError, match=message):
            next(branch_story(engine, tokenizer, "Once", kept, chosen, PARAMS))
