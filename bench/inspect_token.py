"""How long the view inside the model takes for one token of a 128-token story, on the model the playground serves.

    python bench/inspect_token.py [--checkpoint tinygpt/assets/story-model] [--reps 20]

The checkpoint (default: the shipped model) and random weights of the 30M reference shape, each in the precision
the playground serves on this device: `tinygpt.inspect` (teacher-forced forward over the window with hooks,
attention for every layer and head, the logit lens) at the story's last token, and at a token past the context
(a slid window). Median and worst of --reps calls, milliseconds. Named inspect_token.py, not inspect.py: a
script named inspect.py beside others would shadow the standard library's `inspect` module.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tinygpt import GPT, GPTConfig, Tokenizer, load_checkpoint  # noqa: E402
from tinygpt.inference.engine import Engine  # noqa: E402
from tinygpt.inference.inspect import inspect  # noqa: E402
from tinygpt.inference.sampling import SamplingParams  # noqa: E402
from tinygpt.kernels.quantize import default_precision, for_serving  # noqa: E402
from tinygpt.model.checkpoint import SHIPPED_MODEL  # noqa: E402

PROMPT = Tokenizer().encode("Once upon a time, there was a little girl named Lily.")


def timings(model: GPT, ids: list[int], position: int, reps: int) -> tuple[float, float]:
    inspect(model, ids, position, len(PROMPT))  # warm-up
    ms = []
    for _ in range(reps):
        t0 = time.perf_counter()
        inspect(model, ids, position, len(PROMPT))
        ms.append((time.perf_counter() - t0) * 1000)
    return statistics.median(ms), max(ms)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(SHIPPED_MODEL))
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args()
    torch.manual_seed(0)
    models = {args.checkpoint: load_checkpoint(args.checkpoint)[0], "random 30M": GPT(GPTConfig()).eval()}
    for name, model in models.items():
        precision = default_precision(torch.device("cpu"), model.config)
        served = for_serving(model, precision)
        bs = model.config.block_size
        params = SamplingParams(temperature=0.8, top_k=50, max_new_tokens=2 * bs, seed=0, stop_at_eot=False)
        ids = PROMPT + [t.id for t in Engine(served).generate(PROMPT, params)]
        for label, position in ((f"token {bs} of a {bs}-token story", bs - 1), ("a token past the context", 2 * bs)):
            median, worst = timings(served, ids, position, args.reps)
            print(f"{name} ({precision}), {label}: median {median:.1f} ms, worst {worst:.1f} ms", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
