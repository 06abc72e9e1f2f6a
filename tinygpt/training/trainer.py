"""The training loop: mixed precision, gradient accumulation and clipping, the learning-rate schedule, periodic
evaluation with atomic checkpoints (best/ and last/), exact resume, clean stops, a time budget, DDP.

The parts it uses each have one job: evaluation (evaluate.Evaluator), resumable state (state), the budget's plan
(budget.TimeBudget), stop requests (signals.StopRequest), multi-process helpers (distributed), records (metrics).
Memory stays flat: the loss never builds the (tokens x vocab) logits (tinygpt.model.loss).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from tinygpt.data.dataloader import TokenDataset
from tinygpt.device import pick_device, pick_dtype
from tinygpt.evaluation.data_loss import STORY_SAMPLE, Evaluator
from tinygpt.evaluation.history import ENDED, STOPPED
from tinygpt.evaluation.quality import headline
from tinygpt.evaluation.story_loss import forward_positions, story_line
from tinygpt.model.checkpoint import save_checkpoint
from tinygpt.model.gpt import GPT, GPTConfig
from tinygpt.training.budget import TimeBudget, format_duration
from tinygpt.training.config import TrainConfig
from tinygpt.training.distributed import DistInfo, any_across, from_main, init_distributed, mean_across, run_on_main
from tinygpt.training.ema import EMA
from tinygpt.training.metrics import MetricsLog, flops_per_token, peak_flops
from tinygpt.training.metrics import mfu as model_flops_utilization
from tinygpt.training.optim import make_optimizers
from tinygpt.training.run_records import RunRecorder, carry_copy_index
from tinygpt.training.schedule import cooldown_start, lr_at, wsd_lr_at
from tinygpt.training.signals import StopRequest
from tinygpt.training.state import load_resumable, load_training_state, save_training_checkpoint
from tinygpt.training.warm_start import warm_start
from tinygpt.training.windows import WindowSchedule, tie_positions

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (a NaN loss, say); the message says what to do."""


class Trainer:
    """One run: `Trainer(model_config, config).run()`. `clock` (seconds) times steps and the budget."""

    def __init__(self, model_config: GPTConfig, config: TrainConfig, launch: DistInfo = DistInfo(),
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.config, self.clock = config, clock
        seconds = config.budget_seconds
        self.budget = TimeBudget(seconds, clock) if seconds else None  # the clock starts now: start-up counts
        self.device = pick_device(config.device)
        self.dtype = pick_dtype(self.device, config.dtype)
        self.dist = init_distributed(self.device.type, launch)  # launch: from torchrun's variables (train.py)
        self._set_up_cuda()
        self.out_dir = Path(config.out_dir)
        self.step, self.tokens_seen, self.best_val = 0, 0, math.inf
        self.cooldown: tuple[int, float] | None = None  # wsd, once begun: (from step, from rate) (see lr)
        self.max_iters = config.max_iters  # a time budget replaces it with what fits
        self.model = self._model(model_config)
        self.model_config = self.model.config
        self.optimizer = make_optimizers(self.model, config.optimizer, config.weight_decay, config.learning_rate,
                                         (config.beta1, config.beta2), self.device.type, config.muon_lr)
        self.ema = EMA(self.model, config.ema) if config.ema else None
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.windows = WindowSchedule(self.model_config.block_size, config.half_window_frac)
        if config.resume:
            self._restore(self.out_dir / "last")
        self.accum = config.grad_accum(self.model_config.block_size, self.dist.world_size)
        self.step_tokens = config.batch_size * self.model_config.block_size * self.accum * self.dist.world_size
        wrapped = DDP(self.model, device_ids=[self.dist.local_rank] if self.device.type == "cuda" else None) \
            if self.dist.enabled else self.model
        self.train_model = torch.compile(wrapped) if config.compile else wrapped
        self.evaluator = Evaluator(self.evaluated, {"train": self.train_data, "val": self.val_data}, config.eval_iters,
                                   config.batch_size, self.device, self.dtype)
        self.metrics = MetricsLog(self.out_dir, self.step if config.resume else None) if self.dist.is_main else None
        self.records = RunRecorder(self.out_dir, config.snapshots, self.step) if self.dist.is_main else None
        self.data_fingerprint = carry_copy_index(config.data_dir, self.out_dir) if self.dist.is_main else ""
        self.stop = StopRequest()
        log.info("model %.2fM parameters; %d micro-batches of %d x %d per step on %d process(es) = %d tokens",
                 self.model.num_params() / 1e6, self.accum, config.batch_size, self.model_config.block_size,
                 self.dist.world_size, self.step_tokens)
        if config.half_window_frac and self.windows.full_from is None:
            log.info("windows of %d (%d a micro-batch) for the first %.0f%% of the steps, then of %d",
                     self.model_config.block_size // 2, 2 * config.batch_size, 100 * config.half_window_frac,
                     self.model_config.block_size)

    def _set_up_cuda(self) -> None:
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank) if self.dist.enabled else self.device
            torch.backends.cuda.matmul.fp32_precision = "tf32"  # TF32 for fp32 matmuls: ~free speed on Ampere+
            torch.backends.cudnn.conv.fp32_precision = "tf32"

    def _model(self, model_config: GPTConfig) -> GPT:
        """The model to train, with the data it reads: resumed or warm-started (the saved shape wins over flags),
        or new and seeded; with --data-vocab, rows for only the ids in train.bin (a new config: the one passed stays)."""
        c, model = self.config, None
        if c.resume or c.init_from:
            model = load_resumable(self.out_dir / "last", self.device)[0] if c.resume else \
                warm_start(c.init_from, model_config).to(self.device)
            model_config = model.config
        self.train_data = TokenDataset(Path(c.data_dir) / "train.bin", model_config.block_size)
        self.val_data = TokenDataset(Path(c.data_dir) / "val.bin", model_config.block_size)
        if model is not None:
            return model
        kept = self.train_data.used_token_ids() if c.data_vocab else None
        if kept is not None:
            model_config = dataclasses.replace(model_config, kept_tokens=len(kept))
            log.info("data vocabulary: %d of %d token ids get their own rows", len(kept), model_config.vocab_size)
        torch.manual_seed(c.seed)
        return GPT(model_config, None if kept is None else torch.from_numpy(kept)).to(self.device)

    @property
    def evaluated(self) -> GPT:
        """The weights evaluated and saved as best/: the average with --ema, else the trained ones."""
        return self.ema.model if self.ema else self.model

    def _restore(self, last: Path) -> None:
        progress = load_training_state(last, self.optimizer, self.scaler, self.ema)
        self.step, self.tokens_seen = progress["step"], progress["tokens_seen"]
        self.best_val = progress.get("best_val", math.inf)
        self.cooldown = tuple(progress["cooldown"]) if progress.get("cooldown") else None
        self.windows.full_from = progress.get("full_windows_from", 0)  # runs saved before the schedule: whole
        log.info("resuming from %s at step %d (%d tokens seen)", last, self.step, self.tokens_seen)

    def lr(self, step: int) -> float:
        c = self.config
        total = c.lr_decay_iters or self.max_iters
        if c.schedule == "cosine":
            return lr_at(step, c.learning_rate, c.min_lr, c.warmup_iters, total)
        start, start_lr = self.cooldown or (cooldown_start(total, c.cooldown_frac, c.warmup_iters), None)
        return wsd_lr_at(step, c.learning_rate, c.min_lr, c.warmup_iters, total, start, start_lr)

    def _begin_cooldown(self) -> None:
        """A wsd cooldown begins at the first step the plan in force says it should (from the peak)."""
        c = self.config
        start = cooldown_start(c.lr_decay_iters or self.max_iters, c.cooldown_frac, c.warmup_iters)
        if c.schedule == "wsd" and self.cooldown is None and self.step >= start:
            self.cooldown = (self.step, c.learning_rate)
            log.info("cooldown from step %d of %d", self.step, self.max_iters)

    def batch_starts(self, step: int, T: int | None = None) -> np.ndarray:
        """Starts of the windows of T tokens (default: the block) of the whole global batch of `step`: the same
        whatever the number of processes. A micro-batch holds batch_size x block_size tokens."""
        T = T or self.model_config.block_size
        n = self.config.batch_size * self.model_config.block_size // T * self.accum * self.dist.world_size
        rng = np.random.default_rng([self.config.seed, step])
        return rng.integers(0, len(self.train_data) - T - 1, size=n)

    def train_step(self) -> float | None:
        """One optimizer step (all micro-batches); returns the mean loss over all processes, or None when a
        stop request dropped the step (single process: checked between micro-batches, so it ends promptly)."""
        T = self.windows.window(self.step, self.max_iters)
        B = self.config.batch_size * self.model_config.block_size // T  # rows of T tokens in a micro-batch
        world, rank = self.dist.world_size, self.dist.rank
        torch.manual_seed(int(np.random.SeedSequence([self.config.seed, rank, self.step]).generate_state(1)[0]))
        starts, total = self.batch_starts(self.step, T), torch.zeros((), device=self.device)
        self._begin_cooldown()
        self.optimizer.set_lr(self.lr(self.step))
        for micro in range(self.accum):
            if self.stop.requested and not self.dist.enabled:  # DDP ranks must agree: they stop between steps
                self.optimizer.zero_grad()
                return None
            x, y = self.train_data.windows(starts[(micro * world + rank) * B:][:B], self.device, T)  # every world-th
            last = micro == self.accum - 1
            sync = contextlib.nullcontext() if last or not self.dist.enabled else self.train_model.no_sync()
            with sync:  # all-reduce gradients once per step, not per micro-batch
                with self.evaluator.autocast():
                    _, loss = self.train_model(x, y)
                self.scaler.scale(loss / self.accum).backward()
            total += loss.detach() / self.accum
        self._update(T)
        return float(mean_across(total, self.dist))

    def _update(self, T: int) -> None:
        """The optimizer step from the accumulated gradients (clipped), then the average, after windows of T."""
        if self.config.grad_clip > 0:
            self.optimizer.unscale(self.scaler)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step(self.scaler)
        self.scaler.update()
        self.optimizer.zero_grad()
        models = [self.model, self.ema.model] if self.ema else [self.model]
        if self.ema:
            self.ema.update(self.model, self.step)
        for model in models if T < self.model_config.block_size else ():
            tie_positions(model, T)  # positions not read yet follow the last one read (windows.py)

    def save(self, name: str, val_loss: float | None, **extra) -> None:
        meta = dict(step=self.step, tokens_seen=self.tokens_seen, val_loss=val_loss, **extra,
                    train_config=dataclasses.asdict(self.config), data_fingerprint=self.data_fingerprint)
        if self.ema:
            meta["ema_decay"] = self.config.ema  # val_loss is the average's
        if name == "best":
            save_checkpoint(self.evaluated, self.out_dir / name, **meta)
            return
        progress = dict(step=self.step, tokens_seen=self.tokens_seen, best_val=self.best_val,
                        cooldown=self.cooldown, full_windows_from=self.windows.full_from)
        save_training_checkpoint(self.out_dir / name, self.model, self.optimizer, self.scaler, progress,
                                 self.ema, **meta)

    def checkpoint_and_log(self, rate: float, final: bool = False) -> dict:
        """Evaluate, log a metrics record and a sample, save best/ and last/ (rank 0 only). The final one
        also scores every validation token (`val_loss_all`)."""
        c, losses = self.config, self.evaluator.losses()
        per_token = flops_per_token(self.model.num_params(), self.model_config)
        mfu = model_flops_utilization(rate, self.dist.world_size, per_token, peak_flops(self.device, self.dtype))
        record = dict(step=self.step, tokens_seen=self.tokens_seen, train_loss=losses["train"],
                      val_loss=losses["val"], lr=self.lr(self.step - 1), tokens_per_sec=round(rate, 1),
                      mfu=mfu, time=time.time())
        extra = {"val_loss_all": self.evaluator.all_val(), "story_loss_all": self.evaluator.stories(None)} \
            if final else {}
        if final:
            log.info("all %d validation tokens: loss %.4f; every story: %s", len(self.val_data) - 1,
                     extra["val_loss_all"], story_line(extra["story_loss_all"]))
        record["story_loss"] = self.evaluator.stories()
        log.info("step %d: train %.4f, val %.4f, stories %s, lr %.2e, %.0f tok/s%s", self.step, losses["train"],
                 losses["val"], story_line(record["story_loss"]), record["lr"], rate,
                 f", MFU {mfu:.1%}" if mfu else "")
        text, figures = self.evaluator.sample(c.sample_prompt, c.sample_tokens, c.seed)
        if text:
            log.info("sample (%s): %s", headline(figures), text.replace("\n", " "))
            record["sample"], record["sample_quality"] = text, figures
        self.metrics.append({**record, **extra})
        if losses["val"] < self.best_val:
            self.best_val = losses["val"]
            self.save("best", losses["val"], **extra)
        self.save("last", losses["val"], **extra)
        return {**record, **extra}

    def run(self) -> dict | None:
        """Train until max_iters (or a stop request); return the last metrics record (rank 0)."""
        with self.stop:
            try:
                return self._loop()
            except BaseException as e:
                if self.records:
                    self.records.finish(self.step, self.max_iters, STOPPED, f"{type(e).__name__}: {e}")
                raise

    def _record_progress(self, loss: float, rate: float, step_seconds: float) -> None:
        """progress.json for readers, and a snapshot when one is due (main process)."""
        if self.records is None:
            return
        left = self.budget.left() if self.budget else (self.max_iters - self.step) * step_seconds
        self.records.progress(self.step, self.max_iters, loss, rate, left, tokens_seen=self.tokens_seen)
        if self.records.due(self.step, self.max_iters):
            self.records.snapshot(self.evaluated, self.step, self.tokens_seen)

    def _loop(self) -> dict | None:
        c, record = self.config, None
        self.model.train()
        bar = tqdm(total=self.max_iters, initial=self.step, desc="train", unit="step", disable=not self.dist.is_main)
        first, planned = self.step, False
        t0, tokens0, steps0 = self.clock(), self.tokens_seen, self.step
        while self.step < self.max_iters:
            loss = self.train_step()
            if loss is None:
                break
            self._check_finite(loss)
            self.step += 1
            self.tokens_seen += self.step_tokens
            if self.step == first + 1:  # time from here: the first step pays for warm-up allocations
                t0, tokens0, steps0 = self.clock(), self.tokens_seen, self.step
            elapsed = self.clock() - t0
            rate = (self.tokens_seen - tokens0) / elapsed if elapsed > 0 else 0.0
            if not planned and any_across(self.step - steps0 >= 2 and elapsed >= 5, self.dist, self.device):
                planned = True  # (decided together: every rank plans at the same step)
                self._plan(elapsed / (self.step - steps0), bar)
            if self.step % c.log_interval == 0:
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{rate:,.0f}")
            bar.update(1)
            self._record_progress(loss, rate, self.step_tokens / rate if rate else 0.0)
            if any_across(self.stop.requested, self.dist, self.device):
                break
            final = self.step >= self.max_iters
            if self.step % c.eval_interval == 0 or final:
                started = self.clock()
                record = run_on_main(lambda: self.checkpoint_and_log(rate, final), self.dist, self.device,
                                     f"at step {self.step}")
                if self.budget and not final:
                    self.budget.eval_seconds = self.clock() - started
                    self._plan((self.clock() - t0 - self.budget.eval_seconds) / max(1, self.step - steps0), bar)
                t0, tokens0, steps0 = self.clock(), self.tokens_seen, self.step
        self._finish(bar)
        return record

    def _finish(self, bar: tqdm) -> None:
        if self.stop.requested:  # saved first; nothing optional on the way out
            run_on_main(lambda: self.save("last", None), self.dist, self.device, "saving last/")
            log.info("stopped at step %d and saved %s; continue with --resume", self.step, self.out_dir / "last")
        if self.records:
            stopped = self.stop.requested and self.step < self.max_iters
            self.records.finish(self.step, self.max_iters, STOPPED if stopped else ENDED,
                                "stopped by a signal; continue with --resume" if stopped else "")
        bar.close()
        if self.dist.enabled:  # the other ranks wait while rank 0 evaluates and saves, then all shut down together
            torch.distributed.barrier()

    def _check_finite(self, loss: float) -> None:
        if not math.isfinite(loss):
            raise TrainingError(f"loss is {loss} at step {self.step + 1}; stopped. The last good checkpoint "
                                f"({self.out_dir / 'last'}) is untouched. Lower --learning-rate, or use "
                                "--dtype float32 / bfloat16 instead of float16.")

    def _plan(self, step_seconds: float, bar: tqdm) -> None:
        """Fit the step count to a time budget; without one, say how long a CPU run would take."""
        c = self.config
        if self.budget is None:
            left = (self.max_iters - self.step) * step_seconds
            if self.device.type == "cpu" and left > 3600:
                log.warning("at %.1f s per step, %d steps take about %s on this CPU. For a readable story in an "
                            "hour: python train.py --preset cpu --time-budget 60m", step_seconds,
                            self.max_iters - self.step, format_duration(left))
            return
        tokens, T = np.asarray(self.val_data.data), self.model_config.block_size
        eval_tokens = 2 * c.eval_iters * c.batch_size * T + forward_positions(tokens, T, STORY_SAMPLE)
        last = self.budget.plan(self.step, step_seconds, c.eval_interval, eval_tokens, self.step_tokens,
                                len(self.val_data) + forward_positions(tokens, T))
        reached = (self.step, self.lr(self.step - 1)) if self.cooldown else None
        self.max_iters = max(self.step + 1, from_main(last, self.dist, self.device))
        self.cooldown = reached  # a cooldown under way goes on down from where it is to the new end
        bar.total = self.max_iters
        bar.refresh()
        log.info("time budget: %.2f s per step, %d steps in all (%s left)", step_seconds, self.max_iters,
                 format_duration(self.budget.left()))
