"""The token-level engine and the story layer on a tiny model: all of it in milliseconds."""
import dataclasses

import pytest
import torch

from tests.conftest import TINY
from tinygpt.inference.engine import Engine
from tinygpt.inference.sampling import SamplingParams
from tinygpt.inference.story import StorySnapshot, stream_story


def test_after_a_slide_the_logits_equal_a_fresh_forward_over_the_kept_tokens(tiny_model):
    """Catches a slide that keeps the wrong tokens, forgets to rewind the cache, or leaves stale slots visible."""
    engine = Engine(tiny_model)
    ids = torch.randint(0, 50257, (TINY.block_size + 3,), generator=torch.Generator().manual_seed(1)).tolist()
    cache, stream = tiny_model.new_cache(1), engine.new_stream(ids[:TINY.block_size], SamplingParams())
    engine.logits(cache, stream)
    for n, token in enumerate(ids[TINY.block_size:], start=TINY.block_size + 1):
        stream.push(token)
        logits, _ = engine.logits(cache, stream)
        kept = ids[:n][-len(stream.context):]
        assert stream.context == kept and len(stream.context) <= TINY.block_size
        with torch.no_grad():
            fresh = tiny_model(torch.tensor([kept]))[0][0, -1]
        torch.testing.assert_close(logits, fresh, atol=1e-4, rtol=1e-4)
    assert len(stream.context) == engine.keep + 2  # slid once, then two more tokens


def test_long_prompt_keeps_its_last_block_and_streams_past_it(tiny_model):
    engine = Engine(tiny_model)
    params = SamplingParams(temperature=0, max_new_tokens=3 * TINY.block_size, stop_at_eot=False)
    long = list(range(1000, 1000 + 2 * TINY.block_size))
    out = [t.id for t in engine.generate(long, params)]
    assert len(out) == 3 * TINY.block_size
    assert out == [t.id for t in engine.generate(long[-TINY.block_size:], params)]


def test_seeded_streams_repeat_and_differ_by_seed(tiny_model):
    engine, params = Engine(tiny_model), SamplingParams(temperature=1.0, top_k=0, top_p=1.0, seed=3,
                                                        max_new_tokens=20, stop_at_eot=False)
    a = [t.id for t in engine.generate([1, 2, 3], params)]
    assert a == [t.id for t in engine.generate([1, 2, 3], params)]
    assert a != [t.id for t in engine.generate([1, 2, 3], dataclasses.replace(params, seed=4))]


def test_probabilities_and_alternatives_are_the_models(tiny_model):
    """The reported probability is the softmax at temperature 1 whatever the sampling settings; the
    alternatives are the top tokens in order, and the greedy pick is the first of them."""
    engine = Engine(tiny_model)
    params = SamplingParams(temperature=0, max_new_tokens=1, alternatives=4)
    (token,) = engine.generate([5, 6, 7], params)
    with torch.no_grad():
        probs = tiny_model(torch.tensor([[5, 6, 7]]))[0][0, -1].softmax(-1)
    top = torch.topk(probs, 4)
    assert token.id == int(top.indices[0]) and token.prob == pytest.approx(float(top.values[0]), rel=1e-4)
    assert [a for a, _ in token.alternatives] == top.indices.tolist()
    assert [p for _, p in token.alternatives] == pytest.approx(top.values.tolist(), rel=1e-4)


def test_empty_prompt_starts_from_endoftext(tiny_model):
    engine = Engine(tiny_model)
    params = SamplingParams(temperature=0, max_new_tokens=5, stop_at_eot=False)
    assert [t.id for t in engine.generate([], params)] == [t.id for t in engine.generate([50256], params)]


def test_story_snapshots_are_immutable_and_consistent(tiny_model, tokenizer):
    engine = Engine(tiny_model)
    snaps = list(stream_story(engine, tokenizer, "Once upon\x07 a time", SamplingParams(max_new_tokens=6, seed=1)))
    assert len(snaps) == 6 and all(isinstance(s, StorySnapshot) for s in snaps)
    first, last = snaps[0], snaps[-1]
    assert first.text.startswith("Once upon a time") and len(first.pieces) == 1  # control character dropped
    assert last.text == "Once upon a time" + "".join(p for p, _ in last.pieces)
    assert last.n_tokens == 6 and last.seed == 1 and len(last.alternatives) == len(last.pieces)
    assert all(len(a) == 5 for a in last.alternatives)
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.text = "changed"
    assert all(r == -1 or last.alternatives[i][r][0] == last.pieces[i][0] for i, r in enumerate(last.chosen_rank))


def test_random_seed_is_drawn_and_reported(tiny_model, tokenizer):
    engine = Engine(tiny_model)
    snap = list(stream_story(engine, tokenizer, "Hi", SamplingParams(max_new_tokens=2)))[-1]
    again = list(stream_story(engine, tokenizer, "Hi", SamplingParams(max_new_tokens=2, seed=snap.seed)))[-1]
    assert again.text == snap.text
