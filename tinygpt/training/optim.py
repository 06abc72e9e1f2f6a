"""AdamW set up the GPT way, and its state as plain tensors + JSON (so resuming never unpickles)."""
from __future__ import annotations

import torch

from tinygpt.model.gpt import GPT


def make_optimizer(model: GPT, weight_decay: float, learning_rate: float, betas: tuple[float, float],
                   device_type: str) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (Linear, Embedding) only; fused kernels on CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]  # the tied weight appears once
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]  # biases and LayerNorm gains
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type == "cuda")


DEVICE_SETTINGS = ("fused", "foreach", "capturable")


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors named 'state.<param>.<key>', the JSON-able rest: param groups and non-tensor state)."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"state.{idx}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], rest: dict) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for name, value in rest["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    # How the update runs (fused kernels, ...) belongs to the device resumed on, not the one saved on.
    groups = [{**saved, **{k: current[k] for k in DEVICE_SETTINGS if k in current}}
              for saved, current in zip(rest["param_groups"], optimizer.param_groups)]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
