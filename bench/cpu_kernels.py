"""Each of our CPU kernels against PyTorch's own, in the compiled decode step the playground runs.

    python bench/cpu_kernels.py [--checkpoint tinygpt/assets/story-model] [--batch 1 16 64] [--precision int4]

One serving copy of the model (the checkpoint, else random reference-size weights), its decode step compiled
as the engine compiles it, timed at each batch size and one cache position (best of --reps interleaved rounds of --steps steps). Then the same with
one kernel swapped for PyTorch's at a time: the int8/int4 matmuls (PyTorch's weight-only kernels, bf16
compute), the top-k (torch.topk) and the attention over the cache (PyTorch's fused math attention, fp32 cache).
Prints milliseconds per step and, for each kernel, PyTorch's time over ours (above 1: the kernel gains).
"""
import argparse
import copy
import sys
import time
import warnings
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tinygpt import GPT, GPTConfig, load_checkpoint  # noqa: E402
from tinygpt import kernels  # noqa: E402
from tinygpt.inference.engine import compile_step, decode_and_sample  # noqa: E402
from tinygpt.inference.sampling import TOP_K_MAX, SamplingParams, settings_tensor  # noqa: E402
from tinygpt.inference.vocab import VocabTopK  # noqa: E402
from tinygpt.kernels.quantize import cache_dtype, default_precision, for_serving  # noqa: E402
from tinygpt.model.gpt import CachedAttention  # noqa: E402

warnings.filterwarnings("ignore")


def timer(model, topk, batch: int, position: int):
    """A function that runs one compiled decode step at `batch` streams, each at `position`, and returns seconds."""
    step = compile_step(decode_and_sample(model, VocabTopK(model, min(TOP_K_MAX, model.config.vocab_size), topk)),
                        torch.device("cpu"))
    cache = model.new_cache(batch, cache_dtype(model))
    args = (torch.zeros(batch, 1, dtype=torch.long), cache, settings_tensor([SamplingParams()] * batch),
            torch.rand(batch), torch.zeros(batch, model.config.vocab_size, dtype=torch.bool))

    def run(steps: int) -> float:
        with torch.no_grad():
            t0 = time.perf_counter()
            for _ in range(steps):
                cache.reset(position)  # every step at the same position: the same work each time
                step(*args)
            return time.perf_counter() - t0
    run(3)  # compile and warm up
    return run


def time_all(rows, batch: int, position: int, steps: int, reps: int) -> dict[str, float]:
    """Best milliseconds per step of each variant, their rounds interleaved so drift hits all alike."""
    runs = {name: timer(m, topk, batch, position) for name, m, topk in rows}
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(reps):
        for name, run in runs.items():
            best[name] = min(best[name], run(steps) / steps * 1e3)
    return best


def variants(model, precision):
    """(name, serving copy, top-k) for ours and each kernel swapped for PyTorch's."""
    ours = for_serving(model, precision)
    with mock.patch.object(kernels, "loaded", lambda: False), mock.patch.object(kernels, "load", lambda *a, **kw: False):
        torch_matmuls = for_serving(model, precision)  # PyTorch's weight-only int8 / int4; no attention kernel
    math_attention = copy.deepcopy(ours)
    for block in math_attention.transformer.h:
        block.attn.cached = CachedAttention()
    return [("ours", ours, kernels.topk), ("PyTorch matmuls", torch_matmuls, kernels.topk),
            ("torch.topk", ours, torch.topk), ("math attention", math_attention, kernels.topk)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="checkpoint directory (default: random reference-size weights)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--precision", help="int8 or int4 (default: the CPU default for the model)")
    p.add_argument("--position", type=int, default=64, help="cache position of every step (default: mid-story)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    if not kernels.load():
        print("our kernels do not run on this machine; nothing to compare")
        return 1
    torch.manual_seed(0)
    model = load_checkpoint(args.checkpoint)[0] if args.checkpoint else GPT(GPTConfig()).eval()
    if not 0 <= args.position < model.config.block_size:  # past the last slot the compiled step aborts
        p.error(f"--position must be in [0, {model.config.block_size}) for this model, got {args.position}")
    precision = args.precision or default_precision(torch.device("cpu"), model.config)
    rows = variants(model, precision)
    torch._dynamo.config.recompile_limit = 64  # one graph per variant and batch size, all of one function
    print(f"{args.checkpoint or 'random 30M weights'}, {precision}, compiled decode step at position {args.position}, ms per step")
    times = {(name, B): ms for B in args.batch
             for name, ms in time_all(rows, B, args.position, args.steps, args.reps).items()}
    print("batch | " + " | ".join(name for name, _, _ in rows) + " | gain: matmuls | top-k | attention")
    for B in args.batch:
        ours = times[("ours", B)]
        cells = [f"{times[(name, B)]:.3f}" for name, _, _ in rows]
        gains = [f"{times[(name, B)] / ours:.2f}" for name, _, _ in rows[1:]]
        print(f"{B} | " + " | ".join(cells) + " | " + " | ".join(gains))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
