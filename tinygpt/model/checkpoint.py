"""Checkpoints on disk: a directory with `model.safetensors` (weights) and `config.json` (model config + metadata).

Nothing is pickled, so loading a checkpoint from anywhere cannot run code. Writes are atomic: a checkpoint is
built in a temporary directory and renamed into place, so a crash never leaves half of one. Local directories
only; a Hub repo id is resolved above this layer (tinygpt.sharing.hub.from_pretrained).
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tinygpt.data.tokenizer import Tokenizer
from tinygpt.fileio import atomic_dir
from tinygpt.model.gpt import GPT, GPTConfig

WEIGHTS, CONFIG = "model.safetensors", "config.json"
FORMAT = "tinygpt-v1"
TIED = "lm_head.weight"  # shares storage with transformer.wte.weight; stored once
INT8_SCALE = ".int8_scale"  # suffix of the per-row scales of a matrix stored in int8
SHIPPED_MODEL = Path(__file__).resolve().parents[1] / "assets" / "story-model"  # the model in the package


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, corrupt or does not fit its config."""


def int8_rows(w: torch.Tensor, scale_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """A matrix (n, k) as int8 codes and one scale per row, w ~ codes * scale[:, None]: symmetric, 127 levels
    each side. The scale is rounded to `scale_dtype` before the codes are chosen, so they match the scale a
    kernel multiplies by. The one rule for int8 rows: storage, and every int8 serving layer."""
    w = w.detach().float()
    scale = (w.abs().amax(dim=1).clamp(min=1e-8) / 127.0).to(scale_dtype)
    return (w / scale.float()[:, None]).round().clamp(-127, 127).to(torch.int8), scale


def unwrap(model: torch.nn.Module) -> GPT:
    """The plain GPT inside DDP and/or torch.compile wrappers."""
    while not isinstance(model, GPT):
        model = getattr(model, "_orig_mod", None) or getattr(model, "module")
    return model


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights to store: contiguous CPU tensors, the tied head stored once."""
    sd = unwrap(model).state_dict()
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items() if k != TIED}


def int8_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Matrices as int8 with one fp32 scale per row (a quarter of the bytes); everything else as it is."""
    out = {}
    for name, t in state.items():
        if t.is_floating_point() and t.dim() == 2:
            out[name], out[name + INT8_SCALE] = int8_rows(t)
        else:
            out[name] = t
    return out


def dequantize_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `int8_state` (a plain state is returned as it is)."""
    scales = {k[:-len(INT8_SCALE)]: v for k, v in state.items() if k.endswith(INT8_SCALE)}
    return {k: v.float() * scales[k][:, None] if k in scales else v
            for k, v in state.items() if not k.endswith(INT8_SCALE)}


def save_checkpoint(model: torch.nn.Module, directory: str | os.PathLike, *, int8: bool = False,
                    **metadata: Any) -> Path:
    """Write `directory/` atomically: the (uncompiled, unwrapped) weights and a readable config.json.

    `metadata` (step, tokens_seen, val_loss, ...) must be JSON-serialisable; it is stored as is. `int8` stores
    the matrices in 8 bits with per-row scales (what loading then gives is what should be evaluated).
    """
    with atomic_dir(directory) as tmp:
        write_checkpoint(model, tmp, int8=int8, **metadata)
    return Path(directory)


def write_checkpoint(model: torch.nn.Module, directory: Path, *, int8: bool = False, **metadata: Any) -> None:
    """Write the checkpoint files into an existing directory (callers make it atomic)."""
    gpt = unwrap(model)
    info = {
        "format": FORMAT,
        "model": dataclasses.asdict(gpt.config),
        "num_params": gpt.num_params(),
        "storage": "int8 matrices, fp32 per-row scales" if int8 else "as trained",
        "tokenizer": {"name": Tokenizer.name, "sha256": Tokenizer.sha256},
        "metadata": metadata,
    }
    text = json.dumps(info, indent=2)  # fails before anything is written if metadata is not JSON
    state = model_state(gpt)
    save_file(int8_state(state) if int8 else state, str(directory / WEIGHTS), metadata={"format": FORMAT})
    (directory / CONFIG).write_text(text + "\n", encoding="utf-8")


def find_loss_curve(directory: str | os.PathLike) -> Path | None:
    """The loss curve saved with a checkpoint or beside it (train.py writes out/loss.png next to out/best)."""
    directory = Path(directory)
    return next((p for p in (directory / "loss.png", directory.parent / "loss.png") if p.is_file()), None)


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The parsed config.json of a checkpoint, checked for the fields loading needs."""
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; a checkpoint directory holds {CONFIG} and {WEIGHTS}")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); the file is truncated or corrupt") from e
    if not isinstance(info, dict) or not isinstance(info.get("model"), dict):
        raise CheckpointError(f"{path}: no 'model' section; this is not a tinygpt checkpoint config")
    try:
        info["model_config"] = GPTConfig(**info["model"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad model config: {e}") from e
    return info


def load_checkpoint(directory: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[GPT, dict]:
    """Build the model a checkpoint describes and load its weights; return (model in eval mode, info).

    `directory`: a checkpoint directory (for a Hub repo id, see tinygpt.from_pretrained). `info` is
    config.json's content: 'model', 'metadata', 'tokenizer', 'num_params', and 'directory' (where the files are).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint directory (for a Hugging Face Hub repo id, use "
                              "tinygpt.from_pretrained)")
    info = read_config(directory)
    config = info.pop("model_config")
    path = directory / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; save the model with tinygpt.save_checkpoint")
    try:
        state = dequantize_state(load_file(str(path)))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: unreadable safetensors file ({e}); it is truncated or corrupt") from e
    model = GPT(config)
    _check_fits(model, state, path)
    model.load_state_dict(state, strict=False)  # strict=False only for the tied head, checked above
    return model.to(device).eval(), {**info, "directory": str(directory)}


def _check_fits(model: GPT, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = {k: v.shape for k, v in model.state_dict().items() if k != TIED}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit config.json: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    for k, shape in expected.items():
        if state[k].shape != shape:
            raise CheckpointError(f"{path}: {k} has shape {tuple(state[k].shape)}, config.json implies "
                                  f"{tuple(shape)}; the weights do not fit the config")
        if not torch.isfinite(state[k]).all():
            raise CheckpointError(f"{path}: {k} holds NaN or infinite values")
