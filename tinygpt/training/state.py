"""Training checkpoints: the model checkpoint plus what resuming needs (optimizer, scaler, step, tokens,
best val loss), as `trainer_state.safetensors` + `trainer_state.json` in the same directory, written
atomically together.

Batches and dropout are seeded from (seed, rank, step), so the step is the whole data position and RNG
state: a resumed run draws exactly what the uninterrupted run would have.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tinygpt.fileio import atomic_dir
from tinygpt.model.checkpoint import CheckpointError, load_checkpoint, write_checkpoint
from tinygpt.model.gpt import GPT
from tinygpt.training.ema import EMA
from tinygpt.training.optim import Optimizers

log = logging.getLogger(__name__)
STATE_TENSORS, STATE_JSON = "trainer_state.safetensors", "trainer_state.json"


def save_training_checkpoint(directory: str | os.PathLike, model: torch.nn.Module, optimizer: Optimizers,
                             scaler: torch.amp.GradScaler | None, progress: dict, ema: EMA | None = None,
                             **metadata) -> None:
    """Write model + training state to `directory` atomically. `progress` holds step, tokens_seen, ...; the
    averaged weights (`ema`) go with the optimizer state."""
    tensors, rest = optimizer.to_flat()
    if ema is not None:
        tensors.update(ema.tensors())
    rest["scaler"] = scaler.state_dict() if scaler is not None and scaler.is_enabled() else None
    rest["progress"] = progress
    text = json.dumps(rest, indent=1)
    with atomic_dir(directory) as tmp:
        write_checkpoint(model, tmp, **metadata)
        save_file(tensors, str(tmp / STATE_TENSORS))
        (tmp / STATE_JSON).write_text(text + "\n", encoding="utf-8")


def load_training_state(directory: str | os.PathLike, optimizer: Optimizers, scaler: torch.amp.GradScaler | None,
                        ema: EMA | None = None) -> dict:
    """Restore optimizer, scaler and averaged weights from `directory`; return the saved progress dict."""
    directory = Path(directory)
    json_path, tensor_path = directory / STATE_JSON, directory / STATE_TENSORS
    if not json_path.is_file() or not tensor_path.is_file():
        raise CheckpointError(f"{directory}: no training state ({STATE_JSON}, {STATE_TENSORS}); "
                              "it is not a train.py checkpoint, so --resume cannot continue from it")
    try:
        rest = json.loads(json_path.read_text(encoding="utf-8"))
        tensors = load_file(str(tensor_path))
    except Exception as e:  # corrupt JSON or safetensors: say which file
        raise CheckpointError(f"{directory}: training state unreadable ({e}); start afresh without --resume") from e
    averaged = {k: tensors.pop(k) for k in [k for k in tensors if k.startswith("ema.")]}
    try:
        optimizer.load_flat(tensors, rest)
    except ValueError as e:
        raise CheckpointError(f"{directory}: {e}") from e
    if ema is not None and averaged:
        ema.load(averaged)
    elif ema is not None:
        log.warning("%s holds no averaged weights: the average starts from the resumed weights", directory)
    if scaler is not None and rest.get("scaler"):
        scaler.load_state_dict(rest["scaler"])
    return rest["progress"]


def load_resumable(last: Path, device: torch.device) -> tuple[GPT, dict]:
    """The model in `last` (out_dir/last), or a CheckpointError saying there is nothing to resume."""
    if not (last / "config.json").is_file():
        raise CheckpointError(f"nothing to resume: {last} holds no checkpoint (a run saves one at each "
                              f"evaluation); start without --resume, or point --out-dir at a run's folder")
    return load_checkpoint(last, device)
