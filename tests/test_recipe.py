"""The training recipe's parts from issue 24: Muon's parameter groups, exact resume with each optimizer, the WSD
schedule and its re-planning under a time budget, and the averaged (EMA) weights that best/ holds."""
import json
from dataclasses import replace

import pytest
import torch

from tests.test_budget import FakeClock
from tests.test_train import MODEL, config, weights
from tinygpt import GPT, GPTConfig, load_checkpoint
from tinygpt.model.checkpoint import CheckpointError
from tinygpt.training.config import TrainConfig
from tinygpt.training.ema import EMA
from tinygpt.training.optim import hidden_matrices, make_optimizers
from tinygpt.training.schedule import cooldown_start, wsd_lr_at
from tinygpt.training.trainer import Trainer


def test_muon_steps_every_hidden_matrix_and_nothing_else():
    """Catches Muon given the (2-D) embedding / tied head or a LayerNorm, or a block matrix left to AdamW."""
    model = GPT(GPTConfig(block_size=16, n_layer=2, n_head=2, n_embd=32, kept_tokens=50), torch.arange(50))
    opts = make_optimizers(model, "muon", 0.1, 1e-3, (0.9, 0.95), "cpu")
    in_muon = {id(p) for g in opts.named["muon"].param_groups for p in g["params"]}
    in_adamw = {id(p) for g in opts.named["adamw"].param_groups for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    expected = {f"transformer.h.{i}.{m}.weight" for i in range(2)
                for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert {names[i] for i in in_muon} == expected == {n for n, _ in hidden_matrices(model)}
    assert not in_muon & in_adamw and in_muon | in_adamw == set(names)  # each parameter in exactly one
    assert "transformer.wte.weight" in {names[i] for i in in_adamw}
    assert opts.named["muon"].param_groups[0]["adjust_lr_fn"] == "match_rms_adamw"


@pytest.mark.parametrize("weight_decay", [0.0, 0.5])
def test_our_muon_steps_as_torchs_in_the_same_precision_and_close_in_fp32(weight_decay):
    """Catches our Muon (fp32 Newton-Schulz on CPUs, where torch's bf16 took 4x the cpu preset's whole step)
    drifting from torch.optim.Muon: in bf16 the same weights bit for bit after three steps with momentum and
    weight decay; in fp32 within bf16's rounding of the update."""
    from tinygpt.training.optim import Muon

    torch.manual_seed(0)
    start = [torch.randn(48, 16), torch.randn(16, 40)]
    grads = [[torch.randn_like(w) for w in start] for _ in range(3)]

    def run(make):
        params = [torch.nn.Parameter(w.clone()) for w in start]
        opt = make(params)
        for g in grads:
            for p, gi in zip(params, g):
                p.grad = gi.clone()
            opt.step()
        return [p.detach() for p in params]

    kw = dict(lr=0.02, weight_decay=weight_decay)
    theirs = run(lambda ps: torch.optim.Muon(ps, adjust_lr_fn="match_rms_adamw", **kw))
    ours_bf16 = run(lambda ps: Muon(ps, ns_dtype=torch.bfloat16, **kw))
    ours_fp32 = run(lambda ps: Muon(ps, ns_dtype=torch.float32, **kw))
    assert all(torch.equal(a, b) for a, b in zip(theirs, ours_bf16))
    moved = [(a - w).abs().max().item() for a, w in zip(theirs, start)]
    assert all(0 < (a - b).abs().max() < 0.05 * m for a, b, m in zip(theirs, ours_fp32, moved))


def test_muon_orthogonalizes_in_fp32_on_a_cpu_and_bf16_on_cuda():
    """Catches the CPU run going back to bf16 Newton-Schulz (emulated, ~60x slower, on CPUs without bf16 units)."""
    from tinygpt.training.optim import newton_schulz_dtype

    model = GPT(GPTConfig(block_size=16, n_layer=2, n_head=2, n_embd=32, kept_tokens=50), torch.arange(50))
    assert make_optimizers(model, "muon", 0.1, 1e-3, (0.9, 0.95), "cpu").named["muon"].ns_dtype == torch.float32
    assert newton_schulz_dtype("cuda") == torch.bfloat16


def test_muon_lr_scales_muon_only():
    model = GPT(GPTConfig(block_size=16, n_layer=1, n_head=2, n_embd=32))
    opts = make_optimizers(model, "muon", 0.1, 1e-3, (0.9, 0.95), "cpu", muon_lr=4e-3)
    opts.set_lr(5e-4)  # the schedule's value at some step
    assert opts.named["muon"].param_groups[0]["lr"] == pytest.approx(2e-3)
    assert [g["lr"] for g in opts.named["adamw"].param_groups] == [5e-4, 5e-4]


def test_wsd_schedule_shape():
    start = cooldown_start(100, 0.4, warmup_iters=10)
    assert start == 60
    lrs = [wsd_lr_at(s, 1.0, 0.1, 10, 100, start) for s in range(110)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # warmup
    assert all(lr == 1.0 for lr in lrs[9:60])  # stable at the peak until the cooldown
    steps = [a - b for a, b in zip(lrs[59:99], lrs[60:100])]
    assert all(d == pytest.approx(0.9 / 40) for d in steps)  # linear cooldown
    assert lrs[99] == pytest.approx(0.1) and lrs[109] == pytest.approx(0.1)  # min_lr at the last step and after
    assert cooldown_start(20, 1.0, warmup_iters=5) == 5  # a cooldown never eats the warmup


@pytest.mark.slow
def test_wsd_cooldown_starts_as_replanned_and_is_never_restarted(token_data, tmp_path):
    """Steps slow down early (fewer fit: the cooldown must start by the new plan) and speed up inside the
    cooldown (more fit: it must stretch, not restart). Catches a cooldown keyed to the first plan, one restarted
    by a later re-plan (the rate would jump back up), or an end not at min_lr."""
    cfg = config(token_data, tmp_path, max_iters=100_000, eval_interval=10, time_budget="50s", sample_tokens=0,
                 schedule="wsd", cooldown_frac=0.5)  # long enough that the cooldown outlasts the slow steps
    clock = FakeClock()
    trainer = Trainer(MODEL, cfg, clock=clock)
    step, lrs, totals = trainer.train_step, [], []

    def timed_step():
        slow = 15 <= trainer.step < 45
        clock.now += clock.STEP * (2 if slow else 1)
        totals.append(trainer.max_iters)  # the plan this step runs under
        loss = step()
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        return loss

    trainer.train_step = timed_step
    trainer.run()
    start = next(s for s, total in enumerate(totals) if s >= cooldown_start(total, 0.5, cfg.warmup_iters))
    assert lrs[start - 1] == cfg.learning_rate > lrs[start]  # begun when the plan in force said ...
    assert start != cooldown_start(totals[10], 0.5, cfg.warmup_iters)  # ... not the first plan
    assert totals[-1] > totals[start]  # the run grew during the cooldown ...
    assert all(lr == cfg.learning_rate for lr in lrs[cfg.warmup_iters:start])
    assert all(a >= b for a, b in zip(lrs[start:], lrs[start + 1:]))  # ... and its rate only went down
    assert lrs[-1] == pytest.approx(cfg.min_lr)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_is_exact_with_each_optimizer(token_data, tmp_path, optimizer):
    """Catches optimizer state (Muon's momentum, AdamW's moments), the averaged weights or the WSD cooldown step
    not saved and restored: the resumed run would drift from the straight one."""
    kw = dict(eval_interval=4, lr_decay_iters=16, sample_tokens=0, optimizer=optimizer, schedule="wsd",
              cooldown_frac=0.5, ema=0.9)
    Trainer(MODEL, config(token_data, tmp_path / "a", max_iters=10, **kw)).run()  # stops inside the cooldown
    Trainer(MODEL, config(token_data, tmp_path / "a", max_iters=16, resume=True, **kw)).run()
    Trainer(MODEL, config(token_data, tmp_path / "b", max_iters=16, **kw)).run()
    for name in ("last", "best"):
        a, b = weights(tmp_path / "a" / name), weights(tmp_path / "b" / name)
        assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6, name


@pytest.mark.slow
def test_resuming_with_the_other_optimizer_says_which_to_use(token_data, tmp_path):
    Trainer(MODEL, config(token_data, tmp_path, max_iters=4, eval_interval=4, sample_tokens=0,
                          optimizer="muon")).run()
    with pytest.raises(CheckpointError, match="resume it with --optimizer muon"):
        Trainer(MODEL, config(token_data, tmp_path, max_iters=8, resume=True, optimizer="adamw"))


@pytest.mark.slow
def test_best_holds_the_averaged_weights_and_last_the_trained_ones(token_data, tmp_path):
    """Catches best/ saved from the trained weights (or evaluated on them) when --ema is on."""
    trainer = Trainer(MODEL, config(token_data, tmp_path, max_iters=20, eval_interval=20, sample_tokens=0, ema=0.9))
    trainer.run()
    best, last = weights(tmp_path / "best"), weights(tmp_path / "last")
    averaged, trained = trainer.ema.model.state_dict(), trainer.model.state_dict()
    assert all(torch.equal(best[k], averaged[k]) for k in best)
    assert all(torch.equal(last[k], trained[k]) for k in last)
    assert any((best[k] - last[k]).abs().max() > 1e-4 for k in best)  # the average is not the last weights
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert load_checkpoint(tmp_path / "best")[1]["metadata"]["val_loss"] == pytest.approx(record["val_loss"])
    assert trainer.evaluator.model is trainer.ema.model


def test_ema_is_the_moving_average():
    model = torch.nn.Linear(2, 2, bias=False)
    ema = EMA(model, decay=0.5)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(2.0)
    ema.update(model, step=1000)  # past the ramp: the decay itself
    assert torch.allclose(ema.model.weight, start + 1.0)
    ema.update(model, step=0)  # at the start the ramp keeps only (1 + 0) / (10 + 0) of the average
    assert torch.allclose(ema.model.weight, 0.1 * (start + 1.0) + 0.9 * (start + 2.0))


@pytest.mark.parametrize("field, value, message", [("optimizer", "sgd", "--optimizer"),
                                                   ("cooldown_frac", 0.0, "--cooldown-frac"),
                                                   ("ema", 1.0, "--ema"), ("muon_lr", -1.0, "--muon-lr")])
def test_bad_recipe_flags_are_refused_by_name(field, value, message):
    with pytest.raises(ValueError, match=message):
        replace(TrainConfig(), **{field: value})
