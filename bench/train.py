"""Training throughput of the reference 30M model on this machine: fp32, bf16 autocast, and --compile.

    python bench/train.py [--data-dir data/tinystories] [--steps 10] [--batch-size 8] [--device auto]
                          [--model-shape L,H,C]

Uses the real Trainer (same step as train.py) on prepared memmaps when given, else on random tokens.
Prints tokens/s for each mode and the ratios to fp32, all measured in this one run.
"""
import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tinygpt.device import set_malloc_thresholds  # noqa: E402

MODES = [("fp32", "float32", False), ("bf16 autocast", "bfloat16", False),
         ("fp32 + compile", "float32", True), ("bf16 + compile", "bfloat16", True)]


def data_dir(arg: str | None, tmp: str) -> str:
    if arg and (Path(arg) / "train.bin").exists():
        return arg
    rng = np.random.default_rng(0)  # random tokens: throughput does not depend on the text
    for name in ("train.bin", "val.bin"):
        rng.integers(0, 50257, 200_000, dtype=np.uint16).tofile(Path(tmp) / name)
    return tmp


def measure(data: str, out: str, dtype: str, compile: bool, args) -> float:
    import torch

    from tinygpt.model.gpt import GPTConfig
    from tinygpt.training.config import TrainConfig
    from tinygpt.training.trainer import Trainer

    cfg = TrainConfig(data_dir=data, out_dir=out, batch_size=args.batch_size, tokens_per_step=args.batch_size * 128,
                      eval_iters=1, device=args.device, dtype=dtype, compile=compile, warmup_iters=1)
    shape = args.model_shape and dict(zip(("n_layer", "n_head", "n_embd"), map(int, args.model_shape.split(","))))
    trainer = Trainer(GPTConfig(**(shape or {})), cfg)
    for _ in range(args.warmup):  # compile and allocator warm-up
        trainer.train_step()
        trainer.step += 1
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        trainer.train_step()
        trainer.step += 1
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return args.steps * trainer.step_tokens / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="data/tinystories")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile modes")
    p.add_argument("--model-shape", default="", metavar="L,H,C",
                   help="the model's layers, heads and width (default: the reference 6,6,384)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = data_dir(args.data_dir, tmp)
        for name, dtype, compile in MODES:
            if compile and args.no_compile:
                continue
            results[name] = measure(data, str(Path(tmp) / "out"), dtype, compile, args)
            print(f"{name:>16}: {results[name]:8,.0f} tokens/s", flush=True)
    base = results["fp32"]
    for name, rate in results.items():
        print(f"ratio {name} / fp32: {rate / base:.2f}")


if __name__ == "__main__":
    set_malloc_thresholds(small_model=True)  # keep freed buffers: the fastest setting, as the figures were taken
    main()
