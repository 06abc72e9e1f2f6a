"""Validation loss over every token of a token file, each scored once: the figure that training runs, the CPU
recipe candidates and the shipped model are compared by (`python -m tinygpt.training.evaluate CKPT val.bin`)."""
from __future__ import annotations

import contextlib

import torch

from tinygpt.data.dataloader import TokenDataset


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

    from tinygpt.sharing.checkpoint import CheckpointError, load_checkpoint
    from tinygpt.data.sources import DataError

    p = argparse.ArgumentParser(prog="python -m tinygpt.training.evaluate", description=__doc__)
    p.add_argument("checkpoint", help="checkpoint directory (or Hub repo id)")
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
