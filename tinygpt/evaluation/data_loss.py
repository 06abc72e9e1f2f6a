"""Evaluating a model in training: the loss on fixed train and validation batches, the loss over every token of
a token file (each scored once: the figure runs and the shipped model are compared by;
`python -m tinygpt.evaluation.data_loss CKPT val.bin`), and a sample story."""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from tinygpt.data.dataloader import TokenDataset
from tinygpt.data.tokenizer import Tokenizer
from tinygpt.evaluation.quality import headline_figures, report
from tinygpt.evaluation.story_loss import story_loss
from tinygpt.inference.sampling import SamplingParams
from tinygpt.inference.story import generate
from tinygpt.model.gpt import GPT

STORY_SAMPLE = 64  # validation stories scored at each evaluation (all of them at the last: a minute on a CPU)


class Evaluator:
    """What a run measures at each evaluation, on the same fixed batches every time."""

    def __init__(self, model: GPT, data: dict[str, TokenDataset], iters: int, batch_size: int,
                 device: torch.device, dtype: torch.dtype) -> None:
        self.model, self.val_data, self.batch_size, self.dtype = model, data["val"], batch_size, dtype
        self.batches = {name: d.fixed_batches(iters, batch_size, device) for name, d in data.items()}

    def autocast(self):
        device = next(self.model.parameters()).device.type
        return torch.autocast(device, dtype=self.dtype, enabled=self.dtype != torch.float32)

    @torch.no_grad()
    def losses(self) -> dict[str, float]:
        """Mean loss on each set of fixed batches ('train', 'val')."""
        self.model.eval()
        out = {}
        for name, batches in self.batches.items():
            with self.autocast():
                out[name] = float(torch.stack([self.model(x, y)[1].float() for x, y in batches]).mean())
        self.model.train()
        return out

    def all_val(self) -> float:
        """Mean loss over every token of the validation set: the figure to compare runs by."""
        return loss_over_all(self.model, self.val_data, self.batch_size, self.dtype)

    def stories(self, max_stories: int | None = STORY_SAMPLE) -> dict[str, float]:
        """Story loss (tinygpt.evaluation.story_loss) over the first `max_stories` validation stories (None: all),
        rounded: what a metrics record keeps."""
        with self.autocast():
            figures = story_loss(self.model, np.asarray(self.val_data.data), max_stories)
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}

    def sample(self, prompt: str, tokens: int, seed: int) -> tuple[str, dict[str, float]]:
        """A story at the playground's default settings and its headline figures (tinygpt.evaluation.quality);
        ('', {}) for tokens=0."""
        if tokens <= 0:
            return "", {}
        tok, params = Tokenizer(), SamplingParams(max_new_tokens=tokens, seed=seed)
        pieces = list(generate(self.model.eval(), tok, prompt, params))
        self.model.train()
        ended = bool(pieces) and pieces[-1].id == tok.eot_id
        text = "".join(t.text for t in (pieces[:-1] if ended else pieces))
        figures = report([(prompt, text, ended)])
        return prompt + text, headline_figures(figures)


@torch.no_grad()
def loss_over_all(model: torch.nn.Module, data: TokenDataset, batch_size: int = 32,
                  dtype: torch.dtype = torch.float32) -> float:
    """Mean cross-entropy (nats per token, over all vocab ids) of every token of `data` but the first.

    `data.block_size` is the context; `dtype` other than float32 runs the forward under autocast.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    total, count = 0.0, 0
    for x, y in data.all_windows(batch_size, device):
        n = int((y >= 0).sum())
        with autocast:
            total += float(model(x, y)[1]) * n
        count += n
    model.train(was_training)
    return total / count


def main(argv: list[str] | None = None) -> int:
    import argparse

    from tinygpt.data.sources import DataError
    from tinygpt.model.checkpoint import CheckpointError, load_checkpoint

    p = argparse.ArgumentParser(prog="python -m tinygpt.evaluation.data_loss", description=__doc__)
    p.add_argument("checkpoint", help="checkpoint directory, e.g. out/best")
    p.add_argument("tokens", help="a .bin token file from prepare_data.py, e.g. data/tinystories/val.bin")
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args(argv)
    try:
        model, _ = load_checkpoint(args.checkpoint)
        data = TokenDataset(args.tokens, model.config.block_size)
    except (CheckpointError, DataError) as e:
        p.exit(2, f"{p.prog}: error: {e}\n")
    print(f"{args.checkpoint}: loss {loss_over_all(model, data, args.batch_size):.4f} over {len(data) - 1:,} tokens")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
