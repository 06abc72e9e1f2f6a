"""Training configuration: the `TrainConfig` dataclass and the presets (`tiny`, `reference`)."""
from __future__ import annotations

from dataclasses import dataclass, field

from tinygpt.model.gpt import GPTConfig
from tinygpt.training.budget import parse_duration
from tinygpt.training.optim import OPTIMIZERS
from tinygpt.training.schedule import SCHEDULES


def _f(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class TrainConfig:
    data_dir: str = _f("data/tinystories", "folder with train.bin and val.bin from prepare_data.py")
    out_dir: str = _f("out", "where best/, last/, metrics.jsonl and loss.png go")
    max_iters: int = _f(5000, "optimizer steps in the whole run (with --time-budget: set from the budget)")
    time_budget: str = _f("", "train for this long (90s, 60m, 2h): steps are fitted to the measured speed, "
                              "the learning rate decays to the end, and a final eval and checkpoint land in time",
                          metavar="DURATION")
    eval_interval: int = _f(250, "evaluate, sample and checkpoint every N steps")
    eval_iters: int = _f(20, "batches per evaluation (the same fixed batches each time)")
    log_interval: int = _f(10, "update the progress bar every N steps")
    batch_size: int = _f(64, "sequences per micro-batch (per GPU)")
    tokens_per_step: int = _f(65536, "tokens per optimizer step; gradient accumulation makes up the rest")
    learning_rate: float = _f(1e-3, "peak learning rate after warmup")
    min_lr: float = _f(1e-4, "learning rate at the end of the decay (<= learning_rate)")
    warmup_iters: int = _f(200, "linear warmup steps")
    lr_decay_iters: int = _f(0, "steps over which the learning rate decays to min_lr (0 = max_iters)")
    schedule: str = _f("cosine", "after warmup: cosine decay, or wsd (the peak held, then a linear cooldown)",
                       choices=list(SCHEDULES))
    cooldown_frac: float = _f(0.4, "wsd: the share of the steps the cooldown takes (under --time-budget, of the "
                                   "steps as re-planned)")
    optimizer: str = _f("adamw", "adamw, or muon (Muon on the hidden matrices, AdamW on the rest)",
                        choices=list(OPTIMIZERS))
    muon_lr: float = _f(0.0, "Muon's peak learning rate, RMS-matched to AdamW's (0 = --learning-rate)")
    weight_decay: float = _f(0.1, "weight decay (AdamW's, and Muon's), applied to weight matrices only")
    beta1: float = _f(0.9, "AdamW beta1")
    beta2: float = _f(0.95, "AdamW beta2")
    grad_clip: float = _f(1.0, "clip the gradient norm to this (0 = off)")
    ema: float = _f(0.0, "evaluate and save as best/ an exponential moving average of the weights with this "
                         "decay per step (0 = off; e.g. 0.998)")
    device: str = _f("auto", "cuda, cuda:N, mps, cpu or auto (CUDA, then MPS, then CPU)")
    dtype: str = _f("auto", "autocast dtype: float32, bfloat16, float16 or auto",
                    choices=["auto", "float32", "bfloat16", "float16"])
    compile: bool = _f(False, "torch.compile the model (faster on GPUs after a warm-up)")
    half_window_frac: float = _f(0.0, "read windows of half --block-size (twice as many a micro-batch: the same "
                                      "tokens a step) for this share of the steps first, then the whole window: "
                                      "short windows teach more a second (0 = the whole window throughout)")
    data_vocab: bool = _f(False, "give embedding/output rows only to the token ids the training data uses (the "
                                 "rest share one row; losses stay full-vocabulary): ~4x faster small models on CPUs")
    seed: int = _f(1337, "seed for weights, batches and dropout")
    resume: bool = _f(False, "continue from out_dir/last/ exactly where it stopped")
    init_from: str = _f("", "start from the weights of a saved model (a checkpoint folder) instead of new ones; "
                            "its shape and vocabulary win over the flags but --block-size, which may grow its "
                            "window", metavar="DIR")
    sample_prompt: str = _f("Once upon a time", "prompt of the sample story printed at each evaluation")
    sample_tokens: int = _f(60, "length of that sample story (0 = no sample)")
    snapshots: int = _f(0, "keep N small serving copies of the weights (int8) at steps spread log-evenly over the "
                           "run, in out_dir/history/, to read how the stories grew (the playground's Training tab)")
    push_to_hub: str = _f("", "after training, upload out_dir/best to this Hub model repo (USER/NAME)")

    def __post_init__(self) -> None:
        positive = ("max_iters", "eval_interval", "eval_iters", "log_interval", "batch_size", "tokens_per_step")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.min_lr <= self.learning_rate:
            raise ValueError(f"--min-lr ({self.min_lr}) must be between 0 and --learning-rate ({self.learning_rate})")
        if self.time_budget:
            parse_duration(self.time_budget)  # ValueError names the flag and the format
        for name, allowed in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not 0.0 < self.cooldown_frac <= 1.0:
            raise ValueError(f"--cooldown-frac must be in (0, 1], got {self.cooldown_frac}")
        if self.muon_lr < 0:
            raise ValueError(f"--muon-lr must be >= 0 (0 = --learning-rate), got {self.muon_lr}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"--ema must be 0 (off) or a decay below 1 like 0.998, got {self.ema}")
        if self.snapshots < 0:
            raise ValueError(f"--snapshots must be >= 0 (0 = none), got {self.snapshots}")
        if self.init_from and self.resume:
            raise ValueError("--init-from starts a new run and --resume continues one in --out-dir: use one")
        if not 0.0 <= self.half_window_frac < 1.0:
            raise ValueError(f"--half-window-frac must be in [0, 1) (0 = off), got {self.half_window_frac}")
        if self.warmup_iters < 0:
            raise ValueError(f"--warmup-iters must be >= 0, got {self.warmup_iters}")

    @property
    def budget_seconds(self) -> float | None:
        return parse_duration(self.time_budget) if self.time_budget else None

    def grad_accum(self, block_size: int, world_size: int = 1) -> int:
        """Micro-batches per optimizer step on each process to reach exactly `tokens_per_step`. Raises ValueError
        when it is not a whole number of micro-batches (rounding would silently change the global batch)."""
        per_micro = self.batch_size * block_size * world_size
        if self.tokens_per_step % per_micro:
            lower = max(per_micro, self.tokens_per_step // per_micro * per_micro)
            raise ValueError(f"--tokens-per-step {self.tokens_per_step} is not a whole number of micro-batches of "
                             f"batch_size x block_size x processes = {self.batch_size} x {block_size} x {world_size} "
                             f"= {per_micro} tokens; use {lower} or {lower + per_micro}, or change --batch-size")
        return self.tokens_per_step // per_micro


PRESETS: dict[str, tuple[GPTConfig, TrainConfig]] = {
    # The best validation loss after an hour on a 2-core CPU, found by bench/cpu_recipe.py (bench/RESULTS.md).
    # Muon on the hidden matrices; the rate held, then cooled down over the last 40%; weight decay 0.5 since an
    # hour is ~11 passes over the 3M-token sample (dropout cost more than it gave); saved as a weight average.
    # A window of 256 (most stories whole), read as windows of 128 until the cooldown: at 15 minutes as good as
    # a 128 window, where 256 throughout lost (issue 33).
    "cpu": (
        GPTConfig(block_size=256, n_layer=4, n_head=4, n_embd=256, dropout=0.0),
        TrainConfig(time_budget="60m", eval_interval=250, eval_iters=10, batch_size=16, tokens_per_step=8192,
                    learning_rate=2e-3, min_lr=2e-4, warmup_iters=50, data_vocab=True, sample_tokens=80,
                    optimizer="muon", schedule="wsd", cooldown_frac=0.4, weight_decay=0.5, ema=0.998,
                    half_window_frac=0.6, snapshots=6),
    ),
    # The reference 30M model, for one GPU.
    "reference": (GPTConfig(), TrainConfig()),
    # Small enough to learn visibly on a laptop CPU in a couple of minutes.
    "tiny": (
        GPTConfig(block_size=64, n_layer=2, n_head=2, n_embd=64, dropout=0.0),
        TrainConfig(max_iters=300, eval_interval=50, eval_iters=5, log_interval=5, batch_size=16,
                    tokens_per_step=1024, learning_rate=3e-3, min_lr=3e-4, warmup_iters=20, sample_tokens=40,
                    snapshots=4),
    ),
}
