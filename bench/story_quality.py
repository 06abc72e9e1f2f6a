"""What a reader sees, in figures: stories from fixed prompts and seeds at the playground's defaults, scored.

    python bench/story_quality.py [CKPT] [--stories 40] [--train-text ../shared/data/tinystories/train.txt]

CKPT defaults to the shipped model. Each story: one of the playground's example beginnings, a fixed seed, the
playground's temperature / top-k / top-p, up to 300 new tokens, in the precision the playground serves. Printed:
- repeated 3- and 4-grams: the share of a story's word n-grams that already appeared earlier in it (loops);
- distinct-1 / distinct-2: unique words and word pairs over all of them, across the stories (variety);
- unknown words per 100: words (lower-cased letters) found nowhere in the training text (made-up words);
- ended: the share of stories that end with <|endoftext|> within 300 tokens (a story with an end);
- name kept: of the stories whose beginning names a character, the share that still name them in their last third.
"""
import argparse
import re
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tinygpt import Tokenizer, load_checkpoint  # noqa: E402
from tinygpt.inference.engine import Engine  # noqa: E402
from tinygpt.inference.quantize import default_precision, for_serving  # noqa: E402
from tinygpt.inference.sampling import SamplingParams  # noqa: E402
from tinygpt.model.checkpoint import SHIPPED_MODEL  # noqa: E402

PROMPTS = ["Once upon a time, there was a little girl named Lily.", "Tom and his dog went to the park.",
           "One day, a small bird found a shiny key.", "The sun was hot, so Mia wanted ice cream.",
           "Ben had a red ball. He"]  # the playground's examples
MAX_NEW = 300
WORD = re.compile(r"[a-z]+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def repeated(ws: list[str], n: int) -> tuple[int, int]:
    """(n-grams that appeared earlier in the same text, all n-grams)."""
    seen, again = set(), 0
    grams = [tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)]
    for g in grams:
        again += g in seen
        seen.add(g)
    return again, len(grams)


def first_name(prompt: str) -> str | None:
    """The first character the beginning names: a capitalized word that does not start a sentence."""
    for m in re.finditer(r"(?<![.!?] )(?<!^)\b([A-Z][a-z]+)\b", prompt):
        if m.group(1) not in ("I", "The", "One", "Once"):
            return m.group(1)
    m = re.match(r"([A-Z][a-z]+) (?:and|had|was|went)\b", prompt)
    return m.group(1) if m else None


def report(stories: list[tuple[str, str, bool]], vocabulary: set[str] | None) -> dict[str, float]:
    """Figures over (prompt, generated text, ended with <|endoftext|>) triples."""
    r3 = r4 = n3 = n4 = unknown = total = 0
    uni, bi, n_uni, n_bi, named, kept = set(), set(), 0, 0, 0, 0
    for prompt, text, _ in stories:
        ws = words(text)
        a, b = repeated(ws, 3)
        c, d = repeated(ws, 4)
        r3, n3, r4, n4 = r3 + a, n3 + b, r4 + c, n4 + d
        uni.update(ws)
        bi.update(zip(ws, ws[1:]))
        n_uni, n_bi = n_uni + len(ws), n_bi + max(0, len(ws) - 1)
        if vocabulary is not None:
            unknown += sum(w not in vocabulary for w in ws)
            total += len(ws)
        if name := first_name(prompt):
            named += 1
            kept += name.lower() in ws[2 * len(ws) // 3:]
    out = {"repeated 3-grams": r3 / max(n3, 1), "repeated 4-grams": r4 / max(n4, 1),
           "distinct-1": len(uni) / max(n_uni, 1), "distinct-2": len(bi) / max(n_bi, 1),
           "ended": sum(e for *_, e in stories) / len(stories), "name kept": kept / max(named, 1)}
    if vocabulary is not None:
        out["unknown words per 100"] = 100 * unknown / max(total, 1)
    return out


def write_stories(checkpoint: str, n: int) -> list[tuple[str, str, bool]]:
    model, _ = load_checkpoint(checkpoint)
    engine, tok = Engine(for_serving(model, default_precision(torch.device("cpu"), model.config))), Tokenizer()
    stories = []
    for i in range(n):
        prompt = PROMPTS[i % len(PROMPTS)]
        params = SamplingParams(max_new_tokens=MAX_NEW, seed=i)  # the playground's temperature, top-k, top-p
        ids = [t.id for t in engine.generate(tok.encode(prompt), params)]
        ended = bool(ids) and ids[-1] == tok.eot_id
        stories.append((prompt, tok.decode(ids[:-1] if ended else ids), ended))
    return stories


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", nargs="?", default=str(SHIPPED_MODEL))
    p.add_argument("--stories", type=int, default=40)
    p.add_argument("--train-text", type=Path, default=ROOT.parent / "shared" / "data" / "tinystories" / "train.txt")
    p.add_argument("--show", type=int, default=2, help="stories printed in full")
    args = p.parse_args()
    vocabulary = set(words(args.train_text.read_text())) if args.train_text.is_file() else None
    stories = write_stories(args.checkpoint, args.stories)
    for prompt, text, ended in stories[:args.show]:
        print(f"--- {prompt}{text}{' <|endoftext|>' if ended else ''}\n")
    print(f"{args.checkpoint}: {args.stories} stories, up to {MAX_NEW} tokens, playground defaults")
    for name, value in report(stories, vocabulary).items():
        print(f"{name}: {value:.3f}" if "per 100" not in name else f"{name}: {value:.2f}")
    if vocabulary is None:
        print(f"(unknown words not counted: no {args.train_text})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
