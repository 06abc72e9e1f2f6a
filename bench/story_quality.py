"""What a reader sees, in figures: stories from fixed beginnings and seeds, scored (tinygpt.evaluation.quality).

    python bench/story_quality.py [CKPT] [--stories 40] [--train-text ../shared/data/tinystories/train.txt]
    python bench/story_quality.py CKPT --min-p 0.05 --repetition-penalty 1.2      # what the sampler adds

CKPT defaults to the shipped model. Each story: one of the playground's example beginnings, seed i, the
playground's sampling settings unless flags change them, up to 300 new tokens, in the precision the playground
serves. Printed:
- repeated 3- and 4-grams: the share of a story's word n-grams that already appeared earlier in it (loops);
- distinct-1 / distinct-2: unique words and word pairs over all of them, across the stories (variety);
- unknown words per 100: words (lower-cased letters) found nowhere in the training text (made-up words);
- ended: the share of stories that end with <|endoftext|> within 300 tokens (a story with an end);
- name kept: of the stories whose beginning names a character, the share that still name them in their last third;
- cast kept past 128: of the stories longer than 128 tokens that name someone in their first 128, the share that
  name no one new after token 128 (a capitalized word not starting a sentence or a quote); printed beside the
  same share over --valid-text, written by people, who do bring in new characters;
- copied share: the share of the generated tokens inside spans of 24+ tokens found word for word in the training
  text (the copy index the model carries, tinygpt.data.copy_index); printed beside the same share of --valid-text,
  stories no model wrote (TinyStories' stock phrases);
- story loss: every story of --valid-text scored from its own beginning with the windows the engine reads
  (tinygpt.evaluation.story_loss), over all tokens and before / after story position 128 (fp32 weights).
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tinygpt import Tokenizer, load_checkpoint  # noqa: E402
from tinygpt.data.copy_index import CopyIndexError, find_copy_index  # noqa: E402
from tinygpt.evaluation.quality import MAX_NEW, copied_share, report, vocabulary, write_stories  # noqa: E402
from tinygpt.evaluation.story_loss import story_line, story_loss  # noqa: E402
from tinygpt.inference.engine import Engine  # noqa: E402
from tinygpt.inference.sampling import SamplingParams  # noqa: E402
from tinygpt.kernels.quantize import default_precision, for_serving  # noqa: E402
from tinygpt.model.checkpoint import SHIPPED_MODEL  # noqa: E402

SETTINGS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")


def split_text(path: Path) -> list[str]:
    """The stories of a file where each is followed by a line holding <|endoftext|>."""
    return [s.strip() for s in path.read_text().split("<|endoftext|>") if s.strip()]


def read_stories(path: Path, tokenizer: Tokenizer) -> list[int]:
    """A stories file as one token list, each story followed by <|endoftext|>, as prepare_data.py writes."""
    return [t for story in split_text(path) for t in [*tokenizer.encode(story), tokenizer.eot_id]]


def story_loss_figures(figures: dict) -> dict:
    return {k.removeprefix("story loss "): v for k, v in figures.items() if k.startswith("story loss ")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", nargs="?", default=str(SHIPPED_MODEL))
    p.add_argument("--stories", type=int, default=40)
    p.add_argument("--train-text", type=Path, default=ROOT.parent / "shared" / "data" / "tinystories" / "train.txt")
    p.add_argument("--valid-text", type=Path, default=ROOT.parent / "shared" / "data" / "tinystories" / "valid.txt",
                   help="stories for the story loss (skipped if missing)")
    p.add_argument("--show", type=int, default=2, help="stories printed in full")
    p.add_argument("--json", action="store_true", help="end with the figures and settings as one JSON line")
    defaults = SamplingParams()
    for name in SETTINGS:
        p.add_argument(f"--{name.replace('_', '-')}", type=type(getattr(defaults, name)),
                       default=getattr(defaults, name), help="default: the playground's")
    args = p.parse_args()
    try:
        params = SamplingParams(**{name: getattr(args, name) for name in SETTINGS})
        model, _ = load_checkpoint(args.checkpoint)
    except ValueError as e:  # a setting out of its range, or a CheckpointError
        p.error(str(e))
    known = vocabulary(args.train_text.read_text()) if args.train_text.is_file() else None
    engine = Engine(for_serving(model, default_precision(torch.device("cpu"), model.config)))
    stories = write_stories(engine, args.stories, params, Tokenizer())
    for prompt, text, ended in stories[:args.show]:
        print(f"--- {prompt}{text}{' <|endoftext|>' if ended else ''}\n")
    settings = {name: getattr(params, name) for name in SETTINGS}
    print(f"{args.checkpoint}: {args.stories} stories, up to {MAX_NEW} tokens, {settings}")
    try:
        index = find_copy_index(args.checkpoint)
    except CopyIndexError as e:
        index = None
        print(f"(copied share not measured: {e})")
    figures = report(stories, known, Tokenizer(), index)
    for name, value in figures.items():
        print(f"{name}: {value:.0f}" if name.startswith("stories") else f"{name}: {value:.2f}" if "per 100" in name
              else f"{name}: {value:.3f}")
    if known is None:
        print(f"(unknown words not counted: no {args.train_text})")
    if args.valid_text.is_file():
        people = report([("", story, True) for story in split_text(args.valid_text)], tokenizer=Tokenizer(),
                        copies=index)
        print(f"cast kept past 128 in {args.valid_text.name}, written by people: "
              f"{people.get('cast kept past 128', float('nan')):.3f} "
              f"(of {people.get('stories past 128 naming someone', 0):.0f} stories)")
        figures["people's cast kept past 128"] = people.get("cast kept past 128", float("nan"))
        if index is not None:
            print(f"copied share of {args.valid_text.name}, stories no model wrote: {people['copied share']:.3f}")
            held_out = [("", story, True) for story in split_text(args.valid_text)]
            print("  by the shortest span counted: " + ", ".join(
                f"{n} tokens {copied_share(held_out, index, Tokenizer(), n):.3f}" for n in (12, 16, 20, 24, 32)))
            figures["people's copied share"] = people["copied share"]
        tokens = np.array(read_stories(args.valid_text, Tokenizer()), dtype=np.int64)
        figures |= {f"story loss {k}": v for k, v in story_loss(model, tokens).items() if "tokens" not in k}
        print(f"story loss over {args.valid_text.name}: {story_line(story_loss_figures(figures))}")
    else:
        print(f"(story loss not measured: no {args.valid_text})")
    if args.json:
        print(json.dumps({"checkpoint": args.checkpoint, "stories": args.stories, "settings": settings,
                          **{k: round(v, 4) for k, v in figures.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
