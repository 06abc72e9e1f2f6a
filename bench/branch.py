"""What a branch costs against writing its story from the start, and what the layer strip costs.

    python bench/branch.py [--checkpoint tinygpt/assets/story-model] [--tokens 200] [--reps 3]

On the model the playground serves (its precision on this device, the engine the page uses, eagerly): a story of
--tokens new tokens at the page's settings, then a branch at 1/4, 1/2 and 3/4 of it (the kept tokens scored in
one pass per window, the rest written), each against writing the whole story; and `first_top_layers` over the
story (the layer strip). Median of --reps runs, alternated, milliseconds.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tinygpt import Tokenizer, load_checkpoint  # noqa: E402
from tinygpt.inference.branch import branch_story  # noqa: E402
from tinygpt.inference.engine import Engine  # noqa: E402
from tinygpt.inference.inspect import first_top_layers  # noqa: E402
from tinygpt.inference.sampling import SamplingParams  # noqa: E402
from tinygpt.inference.story import stream_story  # noqa: E402
from tinygpt.kernels.quantize import default_precision, for_serving  # noqa: E402
from tinygpt.model.checkpoint import SHIPPED_MODEL  # noqa: E402

PROMPT = "Once upon a time, there was a little girl named Lily."


def ms(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(SHIPPED_MODEL))
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    model, _ = load_checkpoint(args.checkpoint)
    precision = default_precision(torch.device("cpu"), model.config)
    served, tok = for_serving(model, precision), Tokenizer()
    engine = Engine(served)
    params = SamplingParams(max_new_tokens=args.tokens, seed=1, stop_at_eot=False)
    story = list(stream_story(engine, tok, PROMPT, params))[-1]
    ids, alts, w = list(story.ids), story.alt_ids, story.width
    points = [args.tokens // 4, args.tokens // 2, 3 * args.tokens // 4]
    times: dict[str, list[float]] = {"whole story": [], "layer strip": [], **{f"branch at {q}": [] for q in points}}
    for _ in range(args.reps):
        times["whole story"].append(ms(lambda: list(stream_story(engine, tok, PROMPT, params))))
        for q in points:
            chosen = next(a for a in alts[q * w:(q + 1) * w] if a not in (-1, ids[q]))
            times[f"branch at {q}"].append(ms(lambda: list(branch_story(engine, tok, PROMPT, ids[:q], chosen,
                                                                         params))))
        times["layer strip"].append(ms(lambda: first_top_layers(served, list(story.prompt_ids), ids)))
    whole = statistics.median(times["whole story"])
    print(f"{args.checkpoint} ({precision}, window {model.config.block_size}), {args.tokens} new tokens, "
          f"median of {args.reps}:")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name}: {median:.1f} ms ({median / whole:.2f} of the whole story)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
