"""The model that ships with the repo (tinygpt/assets/story-model/), so a fresh clone or a Space plays at once.

`python -m tinygpt.sharing.ship out/best --val data/tinystories/val.bin --recipe "..."` packs a trained checkpoint there:
matrices in int8 with per-row scales (at most 10 MB in all, so a plain `git push` to a Space needs no Git LFS),
with its run's metrics.jsonl (curves and sample stories, a few KB; the snapshots stay behind: each is the model's
own size, and one would already take the folder past 10 MB), then loads the packed copy back and scores it on every validation token, so the figure recorded in its
config.json is the one of the model users get.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from tinygpt.data.copy_index import FILES as COPY_INDEX_FILES
from tinygpt.data.dataloader import TokenDataset
from tinygpt.data.tokenizer import Tokenizer
from tinygpt.data.sources import DataError
from tinygpt.evaluation.data_loss import loss_over_all
from tinygpt.evaluation.history import METRICS, run_folder
from tinygpt.evaluation.quality import MAX_NEW, headline_figures, report, write_stories
from tinygpt.evaluation.story_loss import story_loss
from tinygpt.fileio import atomic_dir
from tinygpt.inference.engine import Engine
from tinygpt.kernels.quantize import default_precision, for_serving
from tinygpt.model.checkpoint import (CONFIG, SHIPPED_MODEL, WEIGHTS, CheckpointError, find_loss_curve,
                                      load_checkpoint, write_checkpoint)

log = logging.getLogger(__name__)
MAX_BYTES = 10_000_000


def ship(checkpoint: str | Path, val_bin: str | Path, recipe: str, out: Path = SHIPPED_MODEL, stories: int = 20
         ) -> dict:
    """Pack `checkpoint` into `out` and return its config.json (with `shipped_val_loss`, and `story_quality`:
    the headline figures of `stories` stories at the playground's settings, as the page serves it)."""
    model, info = load_checkpoint(checkpoint)
    meta = {**info.get("metadata", {}), "recipe": recipe}
    with atomic_dir(out) as tmp:  # a failure leaves the model shipped before in place
        write_checkpoint(model, tmp, int8=True, **meta)
        if curve := find_loss_curve(checkpoint):
            shutil.copyfile(curve, tmp / "loss.png")
        if run := run_folder(checkpoint):  # its training records (a few KB): the Training tab's curves and samples
            shutil.copyfile(run / METRICS, tmp / METRICS)
            for name in COPY_INDEX_FILES:  # and its training text's copy index (~3 MB), where the run has one
                if (run / name).is_file():
                    shutil.copyfile(run / name, tmp / name)
        size = sum(f.stat().st_size for f in tmp.iterdir())
        if size > MAX_BYTES:
            raise ValueError(f"{checkpoint}: {size / 1e6:.1f} MB packed, over the {MAX_BYTES / 1e6:.0f} MB a Space "
                             "takes without Git LFS; ship a smaller model")
        packed, packed_info = load_checkpoint(tmp)
        data = TokenDataset(val_bin, packed.config.block_size)
        packed_info["metadata"]["shipped_val_loss"] = round(loss_over_all(packed, data), 4)
        packed_info["metadata"]["shipped_val_tokens"] = len(data) - 1
        packed_info["metadata"]["shipped_story_loss"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in
                                                         story_loss(packed, np.asarray(data.data)).items()}
        packed_info["metadata"]["story_quality"] = story_figures(packed, stories)
        packed_info["size_bytes"] = size
        del packed_info["directory"]  # where load_checkpoint read it from: the temporary folder
        (tmp / CONFIG).write_text(json.dumps(packed_info, indent=2) + "\n", encoding="utf-8")
    log.info("shipped %s: %.2f MB, val loss %.4f", out, size / 1e6, packed_info["metadata"]["shipped_val_loss"])
    return packed_info


def story_figures(model, stories: int) -> dict:
    """The headline story-quality figures (tinygpt.evaluation.quality) of `stories` stories, as served."""
    served = for_serving(model, default_precision(torch.device("cpu"), model.config), build_kernels=False)
    figures = report(write_stories(Engine(served), stories), tokenizer=Tokenizer())
    return {"stories": stories, "max_new_tokens": MAX_NEW, "settings": "the playground's defaults",
            **headline_figures(figures)}


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m tinygpt.sharing.ship", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="the trained checkpoint, e.g. out/best")
    p.add_argument("--val", required=True, help="val.bin to score the packed model on")
    p.add_argument("--recipe", required=True, help="how it was trained: the command, the machine, the time")
    p.add_argument("--out", type=Path, default=SHIPPED_MODEL)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        ship(args.checkpoint, args.val, args.recipe, args.out)
    except (CheckpointError, DataError, ValueError) as e:  # the shipped model stays as it was
        p.exit(2, f"{p.prog}: error: {e}\n")
    print(f"wrote {args.out} ({', '.join(sorted(f.name for f in args.out.iterdir()))}); weights: {WEIGHTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
