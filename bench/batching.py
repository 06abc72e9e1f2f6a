"""Does a seeded story come out the same alone and among others? The default serving precision, compiled.

    python bench/batching.py [--checkpoint out/best] [--streams 16] [--max-new-tokens 64]

Generates `--streams` seeded stories (different prompts and settings) one at a time through a Batcher, then all
at once through the same Batcher, and prints how many stories are identical and what share of tokens agree
(position by position, up to the first difference of each story: after one, a story goes its own way). Also
the same in fp32, where every story must be identical.
"""
import argparse
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = ["Once upon a time", "Tom and his dog went to the park.", "One day, a small bird found a shiny key.",
           "The sun was hot, so Mia wanted ice cream.", "Ben had a red ball. He", ""]


def stories(batcher, requests: list, together: bool) -> list[list[int]]:
    out: list = [None] * len(requests)

    def one(i: int) -> None:
        out[i] = [t.id for t in batcher.generate(*requests[i])]

    if not together:
        for i in range(len(requests)):
            one(i)
        return out
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def agreement(alone: list[list[int]], together: list[list[int]]) -> tuple[int, float]:
    """Identical stories, and the share of tokens before each story's first difference."""
    same = sum(a == b for a, b in zip(alone, together))
    agreed = sum(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                 for a, b in zip(alone, together))
    return same, agreed / sum(len(a) for a in alone)


def main() -> None:
    import torch

    from tinygpt import GPT, GPTConfig, SamplingParams, Tokenizer, load_checkpoint
    from tinygpt.inference.engine import Engine
    from tinygpt.kernels.quantize import default_precision, for_serving
    from tinygpt.serving.batching import Batcher
    from tinygpt.serving.loading import batch_sizes

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="default: random reference-size weights")
    p.add_argument("--streams", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=64)
    args = p.parse_args()
    device = torch.device("cpu")
    if args.checkpoint:
        model, _ = load_checkpoint(args.checkpoint, device)
    else:
        torch.manual_seed(0)
        model = GPT(GPTConfig()).eval()
    tok = Tokenizer()
    requests = [(tok.encode(PROMPTS[i % len(PROMPTS)]),
                 SamplingParams(temperature=(0.6, 0.8, 1.0)[i % 3], top_k=(20, 50, 200)[i % 3], top_p=0.95,
                                seed=i, max_new_tokens=args.max_new_tokens, stop_at_eot=False))
                for i in range(args.streams)]
    for precision, compile in (("fp32", False), (default_precision(device, model.config), True)):
        engine = Engine(for_serving(model, precision), compile=compile, batch_sizes=batch_sizes(args.streams))
        batcher = Batcher(engine, args.streams)
        alone, together = stories(batcher, requests, False), stories(batcher, requests, True)
        batcher.close()
        same, share = agreement(alone, together)
        print(f"{precision}{' compiled' if compile else ''}: {same}/{len(requests)} stories identical alone and "
              f"batched; {share:.2%} of tokens agree", flush=True)


if __name__ == "__main__":
    main()
