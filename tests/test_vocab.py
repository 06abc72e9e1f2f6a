"""Ranking a kept-token model's head rows as its logits over every id (tinygpt.inference.vocab)."""
import pytest
import torch

from tinygpt import GPT, GPTConfig
from tinygpt.inference.vocab import VocabTopK


@pytest.mark.parametrize("vocab, kept, shared_at", [(50257, 300, "top"), (50257, 300, "middle"), (50257, 300, "below"),
                                                     (40, 30, "middle"), (40, 30, "top")])
def test_vocab_topk_equals_the_topk_of_every_ids_logit(vocab, kept, shared_at):
    """Catches the decode step's ranking of head rows (inference.vocab.VocabTopK) drifting from the logits over every id:
    the shared row's ids missing, counted once, in the wrong place, or given the shared row's raw logit, a kept
    row given another id, or the rows after the shared ones skipped (a vocabulary where fewer ids share it than
    the top-k holds). Ties may come in any order, so it compares values, and each id's own logit."""
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=vocab, block_size=4, n_layer=1, n_head=1, n_embd=4, kept_tokens=kept)
    model = GPT(config, kept_ids=torch.randperm(vocab)[:kept])  # not sorted: rows and ids in different orders
    rows = torch.randn(3, kept + 1)
    cost = model.shared_row_cost()
    rows[:, -1] = {"top": 20.0 + cost, "middle": rows[:, :-1].median() + cost, "below": -20.0}[shared_at]
    k = min(200, vocab)
    values, ids = VocabTopK(model, k)(rows)
    full = model.vocab_logits(rows)
    assert torch.equal(values, full.topk(k).values)
    assert torch.equal(full.gather(1, ids), values)
    assert all(len(set(r)) == k for r in ids.tolist())
    other = GPT(config)  # the id tables follow a loaded row_of
    other.load_state_dict(model.state_dict())
    assert torch.equal(VocabTopK(other, k)(rows)[1], ids)
