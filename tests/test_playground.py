"""The playground's logic without a server: which model it serves and why not, what the page says about a
story and a clicked token, the API's values as settings, and two stories advanced side by side."""
import asyncio
import shutil
import sys

import pytest
import torch

from tests.conftest import TINY
from tinygpt import GPT, Tokenizer, save_checkpoint
from tinygpt.data.tokenizer import EOT_ID
from tinygpt.inference.engine import SampledToken
from tinygpt.inference.sampling import SamplingParams
from tinygpt.inference.story import StoryBuilder, StorySnapshot
from tinygpt.model.checkpoint import SHIPPED_MODEL
from tinygpt.playground.registry import ModelRegistry
from tinygpt.playground.ui import side_by_side
from tinygpt.playground.views import PART_OF_A_CHARACTER, alternatives_table, request_params, stats_line, token_view
from tinygpt.serving.loading import ServeConfig, load_for_serving

HAS_SHIPPED = (SHIPPED_MODEL / "config.json").exists()


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    return save_checkpoint(GPT(TINY), tmp_path / "ckpt")


def registry(tmp_path, **config):
    return ModelRegistry(ServeConfig(compile=False, **config), default_dir=tmp_path / "out" / "best")


@pytest.mark.skipif(not HAS_SHIPPED, reason="no shipped model in this checkout")
def test_a_model_trained_after_start_up_is_served_on_the_next_page_load(tmp_path, ckpt):
    reg = registry(tmp_path)
    assert reg.served.shipped and not reg.refresh()  # nothing new yet
    shutil.copytree(ckpt, tmp_path / "out" / "best")
    assert reg.refresh() and reg.served.source == str(tmp_path / "out" / "best") and not reg.served.shipped
    assert not reg.refresh()  # once


@pytest.mark.skipif(not HAS_SHIPPED, reason="no shipped model in this checkout")
def test_a_broken_default_model_is_explained_and_the_shipped_one_served(tmp_path, ckpt):
    best = shutil.copytree(ckpt, tmp_path / "out" / "best")
    (best / "config.json").write_text("{oops")
    reg = registry(tmp_path)
    assert reg.served.shipped
    assert f"`{best}` could not be loaded" in reg.problem and "not valid JSON" in reg.problem


def test_an_explicit_model_is_never_swapped_or_replaced(tmp_path, ckpt):
    reg = registry(tmp_path, checkpoint=str(tmp_path / "missing"))
    assert reg.served is None and "no such checkpoint directory" in reg.problem_plain
    shutil.copytree(ckpt, tmp_path / "out" / "best")
    assert not reg.refresh() and reg.served is None


def test_a_model_named_twice_is_loaded_once(tmp_path, ckpt):
    """Catches a second load under a label already offered: the dict kept the first model, and the second one's
    batching thread and KV cache lived on, unreachable, for the life of the server."""
    loads = []

    def loader(source, **kwargs):
        loads.append(source)
        return load_for_serving(source, **kwargs)

    reg = ModelRegistry(ServeConfig(compile=False, checkpoint=str(ckpt), compare=(str(ckpt), str(ckpt))),
                        default_dir=tmp_path / "out" / "best", loader=loader)
    assert loads == [str(ckpt)] and reg.labels() == [str(ckpt)]
    reg.served.batcher.close()


def test_compare_models_are_offered_by_label(tmp_path, ckpt):
    other = shutil.copytree(ckpt, tmp_path / "other")
    reg = registry(tmp_path, checkpoint=str(ckpt), compare=(str(other), str(tmp_path / "gone")))
    assert reg.labels() == [str(ckpt), str(other)] and "gone" in reg.problem


def written(prompt: str, tokens: list[SampledToken]) -> StorySnapshot:
    """The snapshot the playground keeps once these sampled tokens are written after `prompt`."""
    return StoryBuilder(Tokenizer(), prompt, SamplingParams(seed=4), 128).add(tokens)


def snapshot() -> StorySnapshot:
    big, little, bang, dot, comma = 1263, 1310, 0, 13, 11  # ' big', ' little', '!', '.', ','
    return written("Once", [SampledToken(big, 0.25, ((little, 0.5), (big, 0.25))),
                            SampledToken(bang, 0.01, ((dot, 0.6), (comma, 0.3))), SampledToken(EOT_ID, 0.9)])


def test_a_kept_story_is_small_and_reads_back_as_written():
    """Catches the per-visitor cost of issue 32: each page keeps its last story for an hour after it closes,
    and 200 tokens as tuples of strings and floats took 149 KB. The flat record reads back the same pieces,
    alternatives and ranks, and takes under 20 KB for 200 tokens with 5 alternatives each."""
    import gc

    tokens = [SampledToken(1000 + i, 0.5 / (i + 1), tuple((1000 + i + j, 0.1 * (5 - j)) for j in range(5)))
              for i in range(200)]
    snap = written("Once upon a time", tokens)
    assert len(snap.pieces) == 200 and snap.text == "Once upon a time" + "".join(t for t, _ in snap.pieces)
    assert snap.pieces[7] == (Tokenizer().token_text(1007), 0.5 / 8) and snap.chosen_rank[7] == 0
    assert snap.alternatives[7] == tuple((Tokenizer().token_text(1007 + j), 0.1 * (5 - j)) for j in range(5))
    seen, size, stack = set(), 0, [snap]
    while stack:  # what the snapshot holds of its own (the tokenizer it reads alternatives through is shared)
        obj = stack.pop()
        if id(obj) in seen or callable(obj) or isinstance(obj, type):
            continue
        seen.add(id(obj))
        size += sys.getsizeof(obj)
        stack += gc.get_referents(obj)
    assert size < 20_000, size


def test_the_clicked_token_is_marked_with_its_probability_and_rank():
    _, view = token_view(snapshot())
    table = alternatives_table(view, 0)
    assert table.startswith("**Token 1: `' big'`**, picked with probability 25.0% (rank 2 of the top 2)")
    assert "| **→** | `' big'` | 25.0% |" in table and "|  | `' little'` | 50.0% |" in table
    table = alternatives_table(view, 1)  # picked below the alternatives shown: added, marked
    assert "not in the top" in table and table.rstrip().endswith("| **→** | `'!'` | 1.0% |")
    assert alternatives_table(view, 5) == ""


def test_every_token_has_something_to_click():
    """Catches the flaky browser test's cause: a token that only begins a character (its text arrives with the
    next token) or is only a line break rendered as an empty box, which no one (and no Playwright) can click."""
    snap = written("", [SampledToken(i, p) for i, p in zip([64, 628, 47249, 222], [0.5, 0.2, 0.1, 0.9])])  # 😀: 2
    pieces, view = token_view(snap)
    assert [text for text, _ in pieces] == ["a", "↵\n↵\n", PART_OF_A_CHARACTER, "😀"]
    assert [p for _, p in pieces] == [0.5, 0.2, 0.1, 0.9]
    assert "`'\\n\\n'`" in alternatives_table(view, 1)  # the table names the real text


def test_the_count_is_of_tokens_shown():
    assert stats_line(snapshot()).startswith("**2** tokens")  # 3 generated, <|endoftext|> not shown


@pytest.mark.parametrize("values, message", [((0.8, 50, 0.9, 10, -5), "seed must be -1"),
                                             ((0.8, 50, 0.9, 10, 1.5), "seed must be"),
                                             ((0.8, 50, 0.9, 10, float("inf")), "seed must be"),
                                             (("0.8", 50, 0.9, 10, 1), "temperature must be a number"),
                                             ((0.8, None, 0.9, 10, 1), "top_k must be an integer"),
                                             ((0.8, 50, float("nan"), 10, 1), "top_p must be a number")])
def test_api_values_get_one_clear_message(values, message):
    with pytest.raises(ValueError, match=message):
        request_params(*values)


def test_api_values_in_range_become_settings():
    params = request_params(0.0, 50.0, 1, 10, 3.0)  # JSON numbers arrive as floats
    assert (params.temperature, params.top_k, params.top_p, params.max_new_tokens, params.seed) == (0.0, 50, 1.0, 10, 3)
    assert request_params(0.8, 50, 0.9, 10, -1).seed is None and request_params(0.8, 50, 0.9, 10, None).seed is None


def test_side_by_side_runs_both_to_the_end_and_stops_both_when_closed():
    """Catches a side that is dropped when the other ends first, and a stopped compare that leaves a stream
    running (its batch row held)."""
    closed = []

    async def stream(name, n):
        try:
            for i in range(1, n + 1):
                await asyncio.sleep(0.001)
                yield f"{name}{i}"
        finally:
            closed.append(name)

    async def run(limit=None):
        out = []
        async for pair in side_by_side(stream("a", 3), stream("b", 1)):
            out.append(pair)
            if len(out) == limit:
                break
        return out

    out = asyncio.run(run())
    assert out[-1] == ("a3", "b1") and all(a and b for a, b in out)
    closed.clear()
    asyncio.run(run(limit=1))
    assert sorted(closed) == ["a", "b"]


def test_a_prompt_that_is_not_text_gets_a_clear_message():
    """Catches a number sent as the prompt through the API reaching the tokenizer: the story event takes its
    inputs as sent (no Gradio preprocessing)."""
    import gradio as gr

    from tinygpt.inference.sampling import SamplingParams
    from tinygpt.playground.ui import story_stream

    with pytest.raises(gr.Error, match="prompt must be text, got int"):
        asyncio.run(anext(story_stream(None, 123, SamplingParams())))


def test_the_model_card_shows_the_story_loss_where_it_was_measured(tmp_path):
    """Catches the page's card leaving out the figure issue 33 asks of every card (or inventing one)."""
    from tinygpt.playground.views import model_card

    torch.manual_seed(0)
    measured = save_checkpoint(GPT(TINY), tmp_path / "a", step=5, story_loss_all={
        "all": 3.5, "before 128": 3.25, "after 128": 3.75, "tokens after 128": 7})
    unmeasured = save_checkpoint(GPT(TINY), tmp_path / "b", step=5)
    card = model_card(load_for_serving(str(measured), precision="fp32"))
    assert "| story loss | 3.500 (before 128: 3.250, after: 3.750) nats/token" in card
    assert "story loss" not in model_card(load_for_serving(str(unmeasured), precision="fp32"))
