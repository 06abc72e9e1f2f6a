"""The view inside the model (tinygpt.inference.inspect) against independent facts: attention rows are
distributions over the past that give back SDPA's output, the last layer's lens is the model's own next-token
distribution (also in a slid window), a hand-built previous-token head is seen as one, and bad requests get a
message."""
import math

import pytest
import torch

from tests.conftest import TINY
from tinygpt import GPT, GPTConfig
from tinygpt.inference.engine import Engine
from tinygpt.inference.inspect import SHARED_ROW, check_request, context_window, inspect
from tinygpt.inference.sampling import SamplingParams
from tinygpt.model.gpt import causal_attention_probs

IDS = [464, 3290, 318, 257, 1310, 3797, 13, 383, 3290, 373, 845, 3772, 11, 290, 340]


def captured_attention(model, ids):
    """(q, k, v, y) of each layer's CausalAttention in one plain forward."""
    seen = []
    hooks = [b.attn.causal.register_forward_hook(lambda m, args, out: seen.append((*args, out)))
             for b in model.transformer.h]
    with torch.no_grad():
        model(torch.tensor([ids]))
    for h in hooks:
        h.remove()
    return seen


def test_attention_rows_are_distributions_over_the_past_that_give_back_sdpa(trained_like):
    """Catches weights scaled or masked unlike SDPA (no 1/sqrt(hs), the future visible, an off-by-one mask):
    then weights @ values would not be what the model computed."""
    for q, k, v, y in captured_attention(trained_like, IDS):
        probs = causal_attention_probs(q, k)  # (1, nh, T, T)
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
        assert (probs.triu(1) == 0).all()
        torch.testing.assert_close(probs @ v, y, rtol=1e-4, atol=1e-5)


def test_the_last_layer_of_the_lens_is_the_models_next_token_distribution(trained_like):
    """Catches a lens read off the wrong position, before the final LayerNorm, or in the wrong window."""
    p = 9
    ins = inspect(trained_like, IDS, p)
    with torch.no_grad():
        probs = trained_like(torch.tensor([IDS[:p]]))[0][0, -1].softmax(-1)
    top = probs.topk(5)
    assert [i for i, _ in ins.lens[-1]] == top.indices.tolist()
    assert [pr for _, pr in ins.lens[-1]] == pytest.approx(top.values.tolist(), rel=1e-4)
    assert ins.lens_token[-1][1] == pytest.approx(float(probs[IDS[p]]), rel=1e-4)
    assert ins.window == tuple(IDS[:p]) and ins.start == 0 and len(ins.lens) == TINY.n_layer + 1
    assert ins.attention.shape == (TINY.n_layer, TINY.n_head, p)


def test_a_token_written_after_the_context_slid_is_inspected_in_the_window_the_engine_read(trained_like):
    """Catches inspecting a late token over the last block_size tokens (or from the story's start) instead of
    the window the engine had after sliding: the lens would not give the probability the token was written with."""
    prompt = IDS[:4]
    params = SamplingParams(temperature=0, max_new_tokens=3 * TINY.block_size, stop_at_eot=False)
    written = list(Engine(trained_like).generate(prompt, params))
    ids = prompt + [t.id for t in written]
    for i in (TINY.block_size - 3, TINY.block_size + 5, 2 * TINY.block_size + 7):
        ins = inspect(trained_like, ids, len(prompt) + i, prompt_tokens=len(prompt))
        assert ins.lens_token[-1] == (0, pytest.approx(written[i].prob, rel=1e-3)), i  # greedy: the top token
        assert ins.window == tuple(ids[ins.start:ins.start + len(ins.window)])


def test_an_empty_prompts_window_starts_with_endoftext():
    assert context_window([5, 6, 7], 0, 0, 8) == ([50256], -1)
    assert context_window([5, 6, 7], 2, 0, 8) == ([50256, 5, 6], -1)


def previous_token_model() -> GPT:
    """One layer, one head, whose queries at position t match only the key at t - 1 (positions one-hot in
    the embedding, token embeddings zero): a previous-token head built by hand."""
    config = GPTConfig(vocab_size=50257, block_size=16, n_layer=1, n_head=1, n_embd=32, dropout=0.0)
    model = GPT(config).eval()
    C = config.n_embd
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for ln in (model.transformer.h[0].ln_1, model.transformer.h[0].ln_2, model.transformer.ln_f):
            ln.weight.fill_(1)
        model.transformer.wpe.weight[:, :16] = torch.eye(16)
        w = model.transformer.h[0].attn.c_attn.weight  # rows: q, then k, then v
        for t in range(1, 16):
            w[t - 1, t] = 10.0  # q_t points at dimension t - 1
        w[C:C + 16, :16] = torch.eye(16)  # k_s is position s
    return model


def test_a_hand_built_previous_token_head_is_seen_attending_to_the_previous_token():
    """Catches attention reported for the wrong query or with positions shifted: the view would not show the
    head's one job."""
    model = previous_token_model()
    for p in range(3, 12):
        ins = inspect(model, IDS, p)
        weights = ins.attention[0, 0]
        assert int(weights.argmax()) == p - 2 and weights.max() > 0.9, p  # window[p-1] is the query's own token


def test_a_kept_token_models_shared_row_is_shown_as_one_row(trained_like):
    """Catches the shared row reported as one ordinary token id (it stands for every id without a row)."""
    kept = sorted(set(IDS[:8]))
    model = GPT(GPTConfig(**{**TINY.__dict__, "kept_tokens": len(kept)}), kept_ids=torch.tensor(kept)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
    ins = inspect(model, IDS, 10, top=len(kept) + 1)
    assert {i for layer in ins.lens for i, _ in layer} == set(kept) | {SHARED_ROW}
    for layer in ins.lens:
        assert sum(p for _, p in layer) == pytest.approx(1.0, rel=1e-4)  # every row listed: a distribution
    token = IDS[10]  # not kept: its row is the shared one
    assert token not in kept
    assert [p for _, p in ins.lens_token] == pytest.approx([dict(layer)[SHARED_ROW] for layer in ins.lens])


@pytest.mark.parametrize("ids, position, prompt, message", [
    ([], 0, 0, "the story is empty"),
    ([1, 2, 3], 3, 3, "position must be an integer from 1 to 2"),
    ([1, 2, 3], 0, 3, "position must be an integer from 1 to 2"),
    ([1, 2, 3], 1.5, 3, "position must be an integer"),
    ([1, 2, 3], 2, 7, "prompt_tokens must be from 0 to 3"),
    ([1, 2, 99999], 1, 0, "token ids must be in [0, 50257)"),
    ([1, "a"], 1, 0, "the story must be text or a list of token ids"),
    ([1] * 5000, 1, 0, "at most 4096 can be inspected"),
])
def test_bad_requests_get_a_message_that_says_what_to_send(ids, position, prompt, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        check_request(ids, position, prompt, 50257)


def test_inspect_takes_a_served_copy(trained_like):
    """Catches a view that only works on the fp32 training model (the page inspects the served copy)."""
    from tinygpt.kernels.quantize import for_serving

    served = for_serving(trained_like, "int8")
    a, b = inspect(trained_like, IDS, 9), inspect(served, IDS, 9)
    assert a.window == b.window and torch.allclose(a.attention, b.attention, atol=0.05)
    assert not math.isnan(b.lens_token[-1][1])


def test_the_layer_strip_is_the_logit_lens_of_each_token(trained_like, tokenizer):
    """Catches a strip read in other windows than the engine's, or off by a position or a layer: each token's
    first top layer is where inspect's lens first ranks it 0 (70 tokens: the 32-token window slides twice)."""
    from tinygpt.inference.engine import Engine
    from tinygpt.inference.inspect import first_top_layers, inspect
    from tinygpt.inference.sampling import SamplingParams
    from tinygpt.inference.story import stream_story

    snap = list(stream_story(Engine(trained_like), tokenizer, "Once upon a time",
                             SamplingParams(temperature=1.0, top_k=3, max_new_tokens=70, seed=2, stop_at_eot=False)))[-1]
    prompt, ids = list(snap.prompt_ids), list(snap.ids)
    strip = first_top_layers(trained_like, prompt, ids)
    assert len(strip) == 70 and set(strip) <= {-1, 0, 1, 2} and -1 in strip and 2 in strip
    for k in (0, 5, 33, 69):
        ranks = [r for r, _ in inspect(trained_like, prompt + ids, len(prompt) + k, len(prompt)).lens_token]
        assert strip[k] == next((layer for layer, r in enumerate(ranks) if r == 0), -1)
