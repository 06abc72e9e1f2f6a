import dataclasses
import math

import pytest
import torch

from tests.conftest import TINY
from tinygpt import GPT, GPTConfig


def test_reference_config_has_30m_parameters():
    model = GPT(GPTConfig())
    assert abs(model.num_params() - 30.0e6) <= 0.1e6
    assert model.lm_head.weight is model.transformer.wte.weight  # tied


def test_untrained_loss_is_near_uniform():
    torch.manual_seed(0)
    model = GPT(GPTConfig()).eval()
    x = torch.randint(0, 50257, (2, 129))
    with torch.no_grad():
        _, loss = model(x[:, :-1], x[:, 1:])
    assert abs(loss.item() - math.log(50257)) < 0.3


def test_forward_shapes_and_no_loss_without_targets(tiny_model):
    logits, loss = tiny_model(torch.randint(0, 50257, (3, 7)))
    assert logits.shape == (3, 7, 50257) and loss is None


def test_causal_future_tokens_do_not_change_past_logits(tiny_model):
    x = torch.randint(0, 50257, (1, 20))
    y = x.clone()
    y[0, 12:] = torch.randint(0, 50257, (8,))
    with torch.no_grad():
        a, _ = tiny_model(x)
        b, _ = tiny_model(y)
    torch.testing.assert_close(a[0, :12], b[0, :12])
    assert not torch.allclose(a[0, 12:], b[0, 12:])


def test_kv_cache_matches_full_forward(tiny_model):
    """Catches a wrong position, mask or cache write in any of prefill, a chunk after a prefix, or one token."""
    x = torch.randint(0, 50257, (2, TINY.block_size))
    with torch.no_grad():
        full, _ = tiny_model(x)
        cache = tiny_model.new_cache(batch_size=2)
        out = [tiny_model(x[:, :5], cache=cache)[0], tiny_model(x[:, 5:11], cache=cache)[0]]
        for t in range(11, TINY.block_size):
            out.append(tiny_model(x[:, t:t + 1], cache=cache)[0])
    assert cache.pos.tolist() == [TINY.block_size] * 2  # the cache advanced itself
    assert torch.allclose(out[0][:, -1], full[:, 4], atol=1e-4)
    assert torch.allclose(out[1][:, -1], full[:, 10], atol=1e-4)
    for t, logits in zip(range(11, TINY.block_size), out[2:]):
        assert torch.allclose(logits[:, -1], full[:, t], atol=1e-4), t


def test_streams_at_different_positions_share_a_batch(tiny_model):
    """Each row of a cache keeps its own position: a batched step equals each stream's own step."""
    a, b = torch.randint(0, 50257, (1, 9)), torch.randint(0, 50257, (1, 4))
    with torch.no_grad():
        full_a, full_b = tiny_model(a)[0][0, -1], tiny_model(b)[0][0, -1]
        cache = tiny_model.new_cache(batch_size=2)
        tiny_model(torch.cat([a[:, :3], b[:, :3]]), cache=cache)  # both rows at position 3
        tiny_model(torch.cat([a[:, 3:8], a[:, 3:8]]), cache=cache)  # row 1 gets junk in slots 3..7 ...
        cache.pos[1] = 3  # ... and goes on from its own position 3: the junk must be masked or overwritten
        logits, _ = tiny_model(torch.cat([a[:, 8:9], b[:, 3:4]]), cache=cache)
    assert cache.pos.tolist() == [9, 4]
    torch.testing.assert_close(logits[0, -1], full_a, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits[1, -1], full_b, atol=1e-4, rtol=1e-4)


def test_too_long_input_is_refused(tiny_model):
    with pytest.raises(ValueError, match="block_size"):
        tiny_model(torch.zeros(1, TINY.block_size + 1, dtype=torch.long))


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=10, n_head=3)


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = GPT(dataclasses.replace(TINY, vocab_size=1000)).train()  # a small head: the blocks must learn it
    x = torch.randint(0, 1000, (4, 17))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(60):
        _, loss = model(x[:, :-1], x[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1
