"""The one-pass decode step (tinygpt.kernels.one_pass, decode.cpp) against the model's own modules: the same
ranking as GPT.forward's logits, the same cache, pick_top's sampling, the same stories through the engine."""
import logging

import pytest
import torch

from tinygpt import GPT, GPTConfig, kernels
from tinygpt.inference.engine import Engine
from tinygpt.inference.sampling import ALT_MAX, SamplingParams, pick_top, settings_tensor
from tinygpt.inference.vocab import VocabTopK
from tinygpt.kernels import one_pass
from tinygpt.kernels.quantize import cache_dtype, for_serving

pytestmark = pytest.mark.skipif(kernels.unsupported() is not None, reason="our CPU kernels do not run here")
WIDE = GPTConfig(block_size=24, n_layer=2, n_head=2, n_embd=64, dropout=0.0)  # the step needs n_embd % 64 == 0
KEPT = GPTConfig(block_size=24, n_layer=2, n_head=2, n_embd=64, dropout=0.0, kept_tokens=700)


def served(config: GPTConfig, precision: str, scale: float = 4.0) -> GPT:
    """A serving copy of random weights, scaled so the logits spread as a trained model's do."""
    torch.manual_seed(0)
    model = GPT(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(scale)
    copy = for_serving(model, precision, amx=False)  # on a CPU with AMX, its layout would keep the other step
    assert one_pass.unavailable(copy) is None
    return copy


def _step(model: GPT, topk: VocabTopK) -> one_pass.OnePassStep:
    return one_pass.OnePassStep(model, topk.k, ALT_MAX, *((topk.id_of_row, topk.shared_ids) if topk.kept else ()))


@pytest.mark.parametrize("config,precision", [(WIDE, "int4"), (WIDE, "int8"), (KEPT, "int8"), (KEPT, "int4")])
def test_the_step_ranks_what_the_model_forward_ranks_and_fills_the_same_cache(config, precision):
    """Caught: any layer, the head, the kept tokens' shared row or the cache writes computed differently from the
    serving copy's own modules."""
    model = served(config, precision)
    topk = VocabTopK(model, 200)
    step, B = _step(model, topk), 3
    ours, theirs = model.new_cache(B, cache_dtype(model)), model.new_cache(B, cache_dtype(model))
    for b, length in enumerate((5, 9, 1)):  # streams at different positions
        prompt = torch.randint(0, 50257, (1, length))
        model.hidden(prompt, ours.rows(b, 1)), model.hidden(prompt, theirs.rows(b, 1))
    settings, u = settings_tensor([SamplingParams(temperature=0)] * B), torch.zeros(B)
    with torch.no_grad():
        for _ in range(4):
            idx = torch.randint(0, 50257, (B, 1))
            logits = model(idx, cache=theirs)[0][:, -1]
            step(idx, ours, settings, u, None)
            values, ids, lse = step.ranked
            ref_values, ref_ids = topk(logits_rows(model, logits))
            assert torch.equal(ours.pos, theirs.pos)
            assert torch.allclose(values, ref_values, atol=1e-4)
            assert torch.equal(ids[:, 0], ref_ids[:, 0])
            assert torch.allclose(lse, logits.logsumexp(-1), atol=1e-4)
            for a, b in zip(ours.layers, theirs.layers):  # fp16: an ulp apart at most
                assert torch.allclose(a.k.float(), b.k.float(), rtol=1e-3, atol=1e-3)
                assert torch.allclose(a.v.float(), b.v.float(), rtol=1e-3, atol=1e-3)


def logits_rows(model: GPT, logits: torch.Tensor) -> torch.Tensor:
    """The head's rows from full-vocabulary logits (the shared row's id, with its cost added back)."""
    c = model.config
    if not c.kept_tokens:
        return logits
    rows = torch.empty(logits.size(0), c.n_rows)
    rows[:, model.row_of.long()] = logits
    rows[:, -1] = logits[:, (model.row_of == c.kept_tokens).nonzero()[0, 0]] + model.shared_row_cost()
    return rows


SETTINGS = [SamplingParams(temperature=0), SamplingParams(),
            SamplingParams(temperature=1.3, top_k=0, top_p=1.0, min_p=0),
            SamplingParams(temperature=0.7, top_k=5, top_p=0.5, min_p=0.2),
            SamplingParams(temperature=1.0, top_k=200, top_p=0.9, min_p=0.0, repetition_penalty=1.8),
            SamplingParams(temperature=0, repetition_penalty=2.0)]


def test_its_sampling_is_pick_top_over_the_same_candidates():
    """Caught: the C++ sampler (sample.h) drifting from sampling.pick_top, the definition: temperature, top-k,
    min-p, top-p, the repetition penalty's re-ranking, the draw, the probabilities and alternatives reported."""
    model = served(WIDE, "int4", scale=2.0)
    topk = VocabTopK(model, 200)
    step, B = _step(model, topk), len(SETTINGS)
    cache = model.new_cache(B, cache_dtype(model))
    gen = torch.Generator().manual_seed(1)
    seen = torch.rand(B, 50257, generator=gen) < 0.3
    settings = settings_tensor(SETTINGS)
    with torch.no_grad():
        for _ in range(12):
            idx, u = torch.randint(0, 50257, (B, 1), generator=gen), torch.rand(B, generator=gen)
            packed = step(idx, cache, settings, u, seen)
            values, ids, lse = step.ranked
            want = pick_top(values, ids, lse, settings, u, seen)
            assert torch.equal(packed[:, 0], want[:, 0]), "the same token"
            assert torch.allclose(packed, want, rtol=1e-5, atol=1e-7)


def test_the_engine_writes_the_same_stories_on_either_step(caplog):
    """Caught: the engine's one-pass path (positions, slides past block_size, batching, settings, the packed
    rows) writing another story than the modules' step; a stream's tokens depending on its batch."""
    model = served(KEPT, "int4", scale=2.0)
    with caplog.at_level(logging.INFO, logger="tinygpt.inference.engine"):
        fast = Engine(model)
    assert "one pass per token" in caplog.text
    slow = Engine(model, one_pass=False)
    for params in (SamplingParams(temperature=0, max_new_tokens=60, stop_at_eot=False),
                   SamplingParams(seed=3, max_new_tokens=60, stop_at_eot=False, alternatives=3,
                                  repetition_penalty=1.3)):
        story = list(fast.generate([464, 1310], params))
        assert [t.id for t in story] == [t.id for t in slow.generate([464, 1310], params)]
        cache, streams = fast.new_cache(3), [fast.new_stream([464, 1310], params)] + [
            fast.new_stream([50, 60, 70], SamplingParams(seed=s, max_new_tokens=60)) for s in (1, 2)]
        batched = [fast.advance(cache, streams)[0] for _ in range(60)]
        assert [t.id for t in batched] == [t.id for t in story]
        assert [t.alternatives for t in batched] == [t.alternatives for t in story]


def test_only_copies_it_computes_get_it(tiny_model):
    """Caught: the engine running the step on a model it would compute wrongly (fp32, a narrow width, weights laid
    out for AMX tiles)."""
    torch.manual_seed(0)
    tiles = for_serving(GPT(WIDE).eval(), "int4", amx=True)  # only packed: no tile instruction runs here
    assert "AMX" in one_pass.unavailable(tiles) and Engine(tiles).one_pass_step is None
    assert "not an int8 or int4 serving copy" in one_pass.unavailable(tiny_model)
    assert Engine(tiny_model).one_pass_step is None
    narrow = for_serving(tiny_model, "int8")  # n_embd 32
    assert one_pass.unavailable(narrow) is not None
    with pytest.raises(ValueError, match="cannot run this model"):
        one_pass.OnePassStep(narrow, 200, ALT_MAX)


def test_a_position_outside_the_context_is_refused_before_anything_runs():
    """Caught: a stream at block_size writing past its cache row (memory corruption, not an error)."""
    model = served(WIDE, "int8")
    step = _step(model, VocabTopK(model, 200))
    cache = model.new_cache(1, cache_dtype(model))
    cache.pos.fill_(WIDE.block_size)
    with pytest.raises(RuntimeError, match="outside the context"):
        step(torch.tensor([[5]]), cache, settings_tensor([SamplingParams()]), torch.zeros(1), None)
    assert cache.pos.item() == WIDE.block_size


def test_a_server_on_built_kernels_has_its_fast_path_from_the_start(tmp_path, caplog):
    """Caught: a server whose copy takes the one-pass step from its first story still starting the warm-up helper
    (a process compiling nothing) and saying it warms up, or never logging that the fast path runs (bench/visitor.py
    waits for that line)."""
    import threading

    from tinygpt import save_checkpoint
    from tinygpt.serving.loading import load_for_serving

    torch.manual_seed(0)
    directory = save_checkpoint(GPT(WIDE), tmp_path / "wide")
    kernels.load()
    with caplog.at_level(logging.INFO):
        loaded = load_for_serving(str(directory), precision="int8", compile=True, concurrency=2,
                                  warm_up=threading.Lock())
    try:
        assert loaded.batcher.engine.one_pass_step or kernels.amx()  # AMX layouts keep the compiled step
        if not kernels.amx():
            assert loaded.warmup is None and not loaded.warming
            assert "fast path: decode step in one pass per token" in caplog.text
    finally:
        loaded.batcher.close()
