"""Story loss (tinygpt.evaluation.story_loss): each story scored from its own beginning with the contexts the
engine reads while writing it, split at story position 128."""
import numpy as np
import pytest

from tinygpt.data.tokenizer import EOT_ID
from tinygpt.evaluation.story_loss import split_stories, story_loss, story_windows
from tinygpt.inference.engine import Engine, Stream, sliding_keep
from tinygpt.inference.sampling import SamplingParams


def engine_contexts(story, block_size):
    """The context the engine holds before writing each token of `story`, from its own Stream."""
    stream = Stream([EOT_ID], SamplingParams(), block_size, sliding_keep(block_size))
    out = []
    for token in story:
        out.append(list(stream.context))
        stream.push(int(token))
    return out


@pytest.mark.parametrize("length", [5, 40, 97])
def test_each_token_is_scored_once_from_the_engines_own_context(length):
    """Catches a window that starts a story without its beginning, a slide that differs from the engine's (a
    token scored with more or less of its story than the engine would give it), a token scored twice or never."""
    story = np.arange(1000, 1000 + length)
    seen = {}
    for window, targets, start in story_windows(story, 16):
        for j, t in enumerate(targets):
            if t >= 0:
                assert t not in seen
                seen[int(t)] = list(window[:j + 1])
    assert sorted(seen) == list(story)
    contexts = engine_contexts(story, 16)
    assert all(seen[int(t)] == c for t, c in zip(story, contexts))


def test_stories_are_split_at_their_end_of_text_and_keep_it():
    tokens = np.array([5, 6, EOT_ID, 7, EOT_ID, 8, 9])
    assert [s.tolist() for s in split_stories(tokens)] == [[5, 6, EOT_ID], [7, EOT_ID], [8, 9]]


def test_story_loss_is_what_the_engine_pays_writing_the_stories(trained_like):
    """The figure means what it says: per-token losses teacher-forced through the engine (its KV cache, its
    slides) average to story loss, over all tokens and on each side of the split (here at 20, the tiny
    model's window being 32)."""
    rng = np.random.default_rng(0)
    stories = [rng.integers(0, 50000, n) for n in (10, 45, 80)]
    tokens = np.concatenate([np.append(s, EOT_ID) for s in stories])
    engine, losses = Engine(trained_like), []
    for story in split_stories(tokens):
        stream, cache = engine.new_stream([EOT_ID], SamplingParams()), engine.new_cache(1)
        for k, token in enumerate(story):
            logits, lse = engine.logits(cache, stream)
            losses.append((k, float(lse - logits[int(token)])))
            stream.push(int(token))
    got = story_loss(trained_like, tokens, batch_size=3, split=20)
    before = [x for k, x in losses if k < 20]
    after = [x for k, x in losses if k >= 20]
    assert got["tokens"] == len(losses) and got["tokens after 20"] == len(after)
    assert got["all"] == pytest.approx(np.mean([x for _, x in losses]), abs=1e-4)
    assert got["before 20"] == pytest.approx(np.mean(before), abs=1e-4)
    assert got["after 20"] == pytest.approx(np.mean(after), abs=1e-4)
