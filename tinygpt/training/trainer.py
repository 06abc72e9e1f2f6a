"""The training loop: mixed precision, gradient accumulation and clipping, warmup-cosine learning rate,
evaluation on fixed batches, atomic checkpoints (best/ and last/), exact resume, clean stops, a time budget, DDP.

Memory stays flat: the loss never builds the (tokens x vocab) logits (tinygpt.model.loss). A stop request (Ctrl-C,
SIGTERM) drops the unfinished step at the next micro-batch, saves last/ and exits, with no eval or sample."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from tinygpt.data.dataloader import TokenDataset
from tinygpt.data.tokenizer import Tokenizer
from tinygpt.device import pick_device, pick_dtype
from tinygpt.inference.sampling import SamplingParams
from tinygpt.inference.story import generate
from tinygpt.model.gpt import GPT, GPTConfig
from tinygpt.sharing.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from tinygpt.training.budget import TimeBudget, format_duration
from tinygpt.training.config import TrainConfig
from tinygpt.training.distributed import DistInfo, any_across, from_main, init_distributed, mean_across
from tinygpt.training.evaluate import loss_over_all
from tinygpt.training.metrics import MetricsLog, flops_per_token, peak_flops
from tinygpt.training.metrics import mfu as model_flops_utilization
from tinygpt.training.optim import make_optimizer
from tinygpt.training.schedule import lr_at
from tinygpt.training.state import load_training_state, save_training_checkpoint

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (a NaN loss, say); the message says what to do."""


def load_resumable(last: Path, device: torch.device) -> tuple[GPT, dict]:
    """The model in `last` (out_dir/last), or a CheckpointError saying there is nothing to resume."""
    if not (last / "config.json").is_file():
        raise CheckpointError(f"nothing to resume: {last} holds no checkpoint (a run saves one at each "
                              f"evaluation); start without --resume, or point --out-dir at a run's folder")
    return load_checkpoint(last, device)


class Trainer:
    def __init__(self, model_config: GPTConfig, config: TrainConfig, launch: DistInfo = DistInfo()) -> None:
        self.config = config
        seconds = config.budget_seconds
        self.budget = TimeBudget(seconds) if seconds else None  # the clock starts now: start-up counts
        self.device = pick_device(config.device)
        self.dtype = pick_dtype(self.device, config.dtype)
        self.dist = init_distributed(self.device.type, launch)  # launch: from torchrun's variables (train.py)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank) if self.dist.enabled else self.device
            torch.backends.cuda.matmul.fp32_precision = "tf32"  # TF32 for fp32 matmuls: ~free speed on Ampere+
            torch.backends.cudnn.conv.fp32_precision = "tf32"
        self.out_dir = Path(config.out_dir)
        self.step, self.tokens_seen, self.best_val = 0, 0, math.inf
        self.max_iters = config.max_iters  # a time budget replaces it with what fits
        last = self.out_dir / "last"
        if config.resume:
            model, info = load_resumable(last, self.device)  # the saved shape wins over flags
            model_config = model.config
        self.train_data = TokenDataset(Path(config.data_dir) / "train.bin", model_config.block_size)
        self.val_data = TokenDataset(Path(config.data_dir) / "val.bin", model_config.block_size)
        if not config.resume:
            model, model_config = self._new_model(model_config)
        self.model, self.model_config = model, model_config
        self.optimizer = make_optimizer(model, config.weight_decay, config.learning_rate,
                                        (config.beta1, config.beta2), self.device.type)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        if config.resume:
            self._restore(last)
        self.accum = config.grad_accum(model_config.block_size, self.dist.world_size)
        self.step_tokens = config.batch_size * model_config.block_size * self.accum * self.dist.world_size
        wrapped = DDP(model, device_ids=[self.dist.local_rank] if self.device.type == "cuda" else None) \
            if self.dist.enabled else model
        self.train_model = torch.compile(wrapped) if config.compile else wrapped
        self.eval_batches = {name: data.fixed_batches(config.eval_iters, config.batch_size, self.device)
                             for name, data in (("train", self.train_data), ("val", self.val_data))}
        self.metrics = MetricsLog(self.out_dir, self.step if config.resume else None) if self.dist.is_main else None
        self.stop_requested = False
        log.info("model %.2fM parameters; %d micro-batches of %d x %d per step on %d process(es) = %d tokens",
                 model.num_params() / 1e6, self.accum, config.batch_size, model_config.block_size,
                 self.dist.world_size, self.step_tokens)

    def _new_model(self, model_config: GPTConfig) -> tuple[GPT, GPTConfig]:
        """A fresh, seeded model; with --data-vocab, rows for only the ids in train.bin (a new config: the one
        passed in stays as it was)."""
        kept = self.train_data.used_token_ids() if self.config.data_vocab else None
        if kept is not None:
            model_config = dataclasses.replace(model_config, kept_tokens=len(kept))
            log.info("data vocabulary: %d of %d token ids get their own rows", len(kept), model_config.vocab_size)
        torch.manual_seed(self.config.seed)
        return GPT(model_config, None if kept is None else torch.from_numpy(kept)).to(self.device), model_config

    def _restore(self, last: Path) -> None:
        progress = load_training_state(last, self.optimizer, self.scaler)
        self.step, self.tokens_seen = progress["step"], progress["tokens_seen"]
        self.best_val = progress.get("best_val", math.inf)
        log.info("resuming from %s at step %d (%d tokens seen)", last, self.step, self.tokens_seen)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def lr(self, step: int) -> float:
        c = self.config
        return lr_at(step, c.learning_rate, c.min_lr, c.warmup_iters, c.lr_decay_iters or self.max_iters)

    def batch_starts(self, step: int) -> np.ndarray:
        """Window starts of the whole global batch of `step`: the same whatever the number of processes."""
        n = self.config.batch_size * self.accum * self.dist.world_size
        rng = np.random.default_rng([self.config.seed, step])
        return rng.integers(0, len(self.train_data) - self.model_config.block_size - 1, size=n)

    def train_step(self) -> float | None:
        """One optimizer step (all micro-batches); returns the mean loss over all processes, or None when a
        stop request dropped the step (single process: checked between micro-batches, so it ends promptly)."""
        B, world, rank = self.config.batch_size, self.dist.world_size, self.dist.rank
        torch.manual_seed(int(np.random.SeedSequence([self.config.seed, rank, self.step]).generate_state(1)[0]))
        starts, total = self.batch_starts(self.step), torch.zeros((), device=self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr(self.step)
        for micro in range(self.accum):
            if self.stop_requested and not self.dist.enabled:  # DDP ranks must agree: they stop between steps
                self.optimizer.zero_grad(set_to_none=True)
                return None
            i = micro * world + rank  # rank r takes every world-th slice
            x, y = self.train_data.windows(starts[i * B:(i + 1) * B], self.device)
            last = micro == self.accum - 1
            sync = contextlib.nullcontext() if last or not self.dist.enabled else self.train_model.no_sync()
            with sync:  # all-reduce gradients once per step, not per micro-batch
                with self.autocast():
                    _, loss = self.train_model(x, y)
                self.scaler.scale(loss / self.accum).backward()
            total += loss.detach() / self.accum
        if self.config.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return float(mean_across(total, self.dist))

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss on the fixed train and val batches."""
        self.model.eval()
        out = {}
        for name, batches in self.eval_batches.items():
            losses = []
            for x, y in batches:
                with self.autocast():
                    losses.append(self.model(x, y)[1].float())
            out[name] = float(torch.stack(losses).mean())
        self.model.train()
        return out

    def evaluate_all_val(self) -> float:
        """Mean loss over every token of val.bin (each scored once): the figure to compare runs by."""
        return loss_over_all(self.model, self.val_data, self.config.batch_size, self.dtype)

    def sample(self) -> str:
        c = self.config
        if c.sample_tokens <= 0:
            return ""
        params = SamplingParams(max_new_tokens=c.sample_tokens, seed=c.seed)  # the playground's defaults
        tokens = generate(self.model.eval(), Tokenizer(), c.sample_prompt, params)
        text = c.sample_prompt + "".join(t.text for t in tokens)
        self.model.train()
        return text

    def save(self, name: str, val_loss: float | None, **extra) -> None:
        meta = dict(step=self.step, tokens_seen=self.tokens_seen, val_loss=val_loss, **extra,
                    train_config=dataclasses.asdict(self.config))
        if name == "best":
            save_checkpoint(self.model, self.out_dir / name, **meta)
            return
        progress = dict(step=self.step, tokens_seen=self.tokens_seen, best_val=self.best_val)
        save_training_checkpoint(self.out_dir / name, self.model, self.optimizer, self.scaler, progress, **meta)

    def checkpoint_and_log(self, rate: float, final: bool = False) -> dict:
        """Evaluate, log a metrics record and a sample, save best/ and last/ (rank 0 only). The final one
        also scores every validation token (`val_loss_all`)."""
        losses = self.evaluate()
        per_token = flops_per_token(self.model.num_params(), self.model_config)
        mfu = model_flops_utilization(rate, self.dist.world_size, per_token, peak_flops(self.device, self.dtype))
        record = dict(step=self.step, tokens_seen=self.tokens_seen, train_loss=losses["train"],
                      val_loss=losses["val"], lr=self.lr(self.step - 1), tokens_per_sec=round(rate, 1),
                      mfu=mfu, time=time.time())
        if final:
            record["val_loss_all"] = self.evaluate_all_val()
            log.info("all %d validation tokens: loss %.4f", len(self.val_data) - 1, record["val_loss_all"])
        self.metrics.append(record)
        log.info("step %d: train %.4f, val %.4f, lr %.2e, %.0f tok/s%s", self.step, losses["train"],
                 losses["val"], record["lr"], rate, f", MFU {mfu:.1%}" if mfu else "")
        if text := self.sample():
            log.info("sample: %s", text.replace("\n", " "))
        extra = {"val_loss_all": record["val_loss_all"]} if final else {}
        if losses["val"] < self.best_val:
            self.best_val = losses["val"]
            self.save("best", losses["val"], **extra)
        self.save("last", losses["val"], **extra)
        return record

    def _request_stop(self, signum, frame) -> None:
        if self.stop_requested:  # asked twice: stop now
            raise KeyboardInterrupt
        log.warning("signal %d: finishing this step, saving last/ and stopping", signum)
        self.stop_requested = True

    def run(self) -> dict | None:
        """Train until max_iters (or a signal); return the last metrics record (rank 0)."""
        handlers = {}
        if threading.current_thread() is threading.main_thread():  # signals can only be caught there
            handlers = {s: signal.signal(s, self._request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
        record = None
        try:
            record = self._loop()
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
        return record

    def _loop(self) -> dict | None:
        c, record = self.config, None
        self.model.train()
        bar = tqdm(total=self.max_iters, initial=self.step, desc="train", unit="step", disable=not self.dist.is_main)
        first, planned = self.step, False
        t0, tokens0, steps0 = time.perf_counter(), self.tokens_seen, self.step
        while self.step < self.max_iters:
            loss = self.train_step()
            if loss is None:
                break
            self._check_finite(loss)
            self.step += 1
            self.tokens_seen += self.step_tokens
            if self.step == first + 1:  # time from here: the first step pays for warm-up allocations
                t0, tokens0, steps0 = time.perf_counter(), self.tokens_seen, self.step
            elapsed = time.perf_counter() - t0
            rate = (self.tokens_seen - tokens0) / elapsed if elapsed > 0 else 0.0
            if not planned and any_across(self.step - steps0 >= 2 and elapsed >= 5, self.dist, self.device):
                planned = True  # (decided together: every rank plans at the same step)
                self._plan(elapsed / (self.step - steps0), bar)
            if self.step % c.log_interval == 0:
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{rate:,.0f}")
            bar.update(1)
            if any_across(self.stop_requested, self.dist, self.device):
                break
            final = self.step >= self.max_iters
            if self.step % c.eval_interval == 0 or final:
                started = time.perf_counter()
                record = self._main_only(lambda: self.checkpoint_and_log(rate, final))
                if self.budget and not final:
                    self.budget.eval_seconds = time.perf_counter() - started
                    self._plan((time.perf_counter() - t0 - self.budget.eval_seconds) / max(1, self.step - steps0), bar)
                t0, tokens0, steps0 = time.perf_counter(), self.tokens_seen, self.step
        if self.stop_requested:  # saved first; nothing optional on the way out
            self._main_only(lambda: self.save("last", None))
            log.info("stopped at step %d and saved %s; continue with --resume", self.step, self.out_dir / "last")
        bar.close()
        if self.dist.enabled:  # the other ranks wait while rank 0 evaluates and saves, then all shut down together
            torch.distributed.barrier()
        return record

    def _check_finite(self, loss: float) -> None:
        if not math.isfinite(loss):
            raise TrainingError(f"loss is {loss} at step {self.step + 1}; stopped. The last good checkpoint "
                                f"({self.out_dir / 'last'}) is untouched. Lower --learning-rate, or use "
                                "--dtype float32 / bfloat16 instead of float16.")

    def _main_only(self, work):
        """Run `work` on rank 0 only, then let every rank know whether it failed: on a failure (a full disk while
        saving, say) all ranks stop now with the error, instead of the others waiting in their next collective
        until a timeout. Rank 0 raises its own exception; the others a TrainingError pointing at it."""
        result, error = None, None
        if self.dist.is_main:
            try:
                result = work()
            except Exception as e:  # noqa: BLE001 - re-raised below, after the others are told
                error = e
        if any_across(error is not None, self.dist, self.device):
            if error is not None:
                raise error
            raise TrainingError(f"rank 0 failed at step {self.step} (its error is above); this rank stops too")
        return result

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
        eval_tokens = 2 * c.eval_iters * c.batch_size * self.model_config.block_size
        if not self.budget.eval_seconds:  # before the first evaluation: forward-only is ~1/3 of a step
            self.budget.eval_seconds = step_seconds * eval_tokens / (3 * self.step_tokens)
        self.budget.final_seconds = self.budget.eval_seconds * (1 + len(self.val_data) / eval_tokens)
        fit = self.budget.steps_that_fit(step_seconds, c.eval_interval)
        self.max_iters = max(self.step + 1, from_main(self.step + fit, self.dist, self.device))
        bar.total = self.max_iters
        bar.refresh()
        log.info("time budget: %.2f s per step, %d steps in all (%s left)", step_seconds, self.max_iters,
                 format_duration(self.budget.left()))
