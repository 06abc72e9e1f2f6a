"""The chunked head + loss (tinygpt.model.loss) and the kept-token head (GPTConfig.kept_tokens)."""
import math

import pytest
import torch
import torch.nn.functional as F

from tinygpt import GPT, GPTConfig
from tinygpt.model import loss as loss_mod
from tinygpt.model.loss import linear_cross_entropy


@pytest.mark.parametrize("chunk_elements", [1 << 24, 7 * 50])  # one chunk; many uneven chunks
def test_chunked_loss_and_grads_match_autograd(monkeypatch, chunk_elements):
    """Catches a wrong softmax gradient, a lost chunk, or ignored targets (-1) counted in the mean."""
    monkeypatch.setattr(loss_mod, "CHUNK_ELEMENTS", chunk_elements)
    torch.manual_seed(0)
    h = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    head = torch.nn.Linear(16, 50, bias=False, dtype=torch.float64)
    w = head.weight
    t = torch.randint(0, 50, (37,))
    t[[3, 20]] = -1
    ref = F.cross_entropy(h @ w.t(), t, ignore_index=-1)
    g_ref = torch.autograd.grad(3.0 * ref, (h, w))
    out = linear_cross_entropy(h, head, t)
    g_out = torch.autograd.grad(3.0 * out, (h, w))
    assert out.item() == pytest.approx(ref.item(), rel=1e-6)  # the loss is summed in fp32
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # the softmax is taken in fp32


def test_no_grad_path_gives_the_same_loss():
    torch.manual_seed(1)
    h, head, t = torch.randn(20, 8), torch.nn.Linear(8, 30, bias=False), torch.randint(0, 30, (20,))
    w = head.weight.detach()
    with torch.no_grad():
        a = linear_cross_entropy(h, head, t)
    assert a.item() == pytest.approx(F.cross_entropy(h @ w.t(), t).item(), rel=1e-5)


def test_bf16_autocast_loss_is_close_to_fp32():
    """Catches the chunks computing in the wrong dtype under autocast (or leaving autocast's casts broken)."""
    torch.manual_seed(2)
    h = torch.randn(64, 32, requires_grad=True)
    head = torch.nn.Linear(32, 100, bias=False)
    w = head.weight
    t = torch.randint(0, 100, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = linear_cross_entropy(h, head, t)
    out.backward()
    assert out.item() == pytest.approx(F.cross_entropy(h @ w.t(), t).item(), rel=2e-2)  # bf16 matmul
    assert h.grad.dtype == torch.float32 and w.grad.dtype == torch.float32


KEPT = GPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.0, kept_tokens=5)


def kept_model():
    torch.manual_seed(0)
    return GPT(KEPT, kept_ids=torch.tensor([10, 20, 30, 40, 50256])).eval()


def test_kept_token_model_is_a_full_vocabulary_distribution():
    """Catches probabilities that do not sum to one over all 50,257 ids, or an infinite cost for other ids."""
    model = kept_model()
    assert model.lm_head.weight.shape == (6, 16)
    logits, _ = model(torch.tensor([[10, 20, 999]]))
    assert logits.shape == (1, 3, 50257)
    probs = logits.double().softmax(-1)
    assert torch.allclose(probs.sum(-1), torch.ones(1, 3, dtype=torch.double))
    assert torch.isfinite(logits).all()
    # ids not kept share the last row equally
    assert logits[0, 0, 999] == logits[0, 0, 12345]


def test_kept_token_loss_equals_the_full_vocabulary_cross_entropy():
    """The honest figure: the loss of a kept-token model is cross-entropy over all 50,257 ids, unknown ids included."""
    model = kept_model()
    x = torch.tensor([[10, 20, 30, 40, 7, 50256, 10, 999]])
    y = torch.tensor([[20, 30, 40, 7, 50256, 10, 999, 20]])  # 7 and 999 are not kept
    logits, _ = model(x)
    ref = F.cross_entropy(logits.view(-1, 50257), y.view(-1))
    _, loss = model(x, y)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert math.isfinite(loss.item())


def test_kept_token_model_decodes_like_its_full_forward():
    from tinygpt.inference.engine import Engine
    from tinygpt.inference.sampling import SamplingParams

    model = kept_model()
    engine = Engine(model)
    ids = [10, 999, 30, 40]
    full, _ = model(torch.tensor([ids]))
    cache, stream = model.new_cache(1), engine.new_stream(ids[:2], SamplingParams())
    engine.logits(cache, stream)
    stream.push(ids[2])
    torch.testing.assert_close(engine.logits(cache, stream)[0], full[0, 2], atol=1e-4, rtol=1e-4)


def test_kept_token_engine_reports_the_full_vocabulary_probabilities():
    """Catches the decode step's token, probability or alternatives differing from a softmax over all 50,257
    logits of a kept-token model (the rows' logsumexp must count the shared row once, not once per id)."""
    from tinygpt.inference.engine import Engine
    from tinygpt.inference.sampling import SamplingParams

    model, ids = kept_model(), [10, 999, 30]
    params = SamplingParams(temperature=0, max_new_tokens=4, stop_at_eot=False, alternatives=8)
    for token in Engine(model).generate(ids, params):
        probs = model(torch.tensor([ids]))[0][0, -1].double().softmax(-1)
        top = probs.topk(8)
        assert token.id == top.indices[0].item()
        assert token.prob == pytest.approx(top.values[0].item(), rel=1e-5)
        assert [p for _, p in token.alternatives] == pytest.approx(top.values.tolist(), rel=1e-5)
        assert all(probs[i].item() == pytest.approx(p, rel=1e-5) for i, p in token.alternatives)
        ids.append(token.id)


def test_data_vocab_training_keeps_the_datas_ids_and_round_trips(token_data, tmp_path):
    """Catches kept ids taken from the wrong file, or lost in the checkpoint (row_of), or a resume that rebuilds them."""
    import numpy as np

    from tests.test_train import MODEL, config
    from tinygpt import load_checkpoint
    from tinygpt.training.trainer import Trainer

    trainer = Trainer(MODEL, config(token_data, tmp_path, max_iters=20, eval_interval=20, data_vocab=True))
    trainer.run()
    used = np.unique(np.fromfile(token_data / "train.bin", dtype=np.uint16))
    model, info = load_checkpoint(tmp_path / "last")
    assert model.config.kept_tokens == len(used) and model.lm_head.weight.shape[0] == len(used) + 1
    assert (model.row_of[torch.from_numpy(used.astype(np.int64))] == torch.arange(len(used))).all()
    x = torch.from_numpy(used[None, :8].astype(np.int64))
    torch.testing.assert_close(model(x)[0], trainer.model.eval()(x)[0])
    assert info["metadata"]["val_loss_all"] < 5.0
