"""The optimizers a run steps: AdamW set up the GPT way, or Muon on the hidden matrices with AdamW on the rest;
their state as plain tensors + JSON (so resuming never unpickles)."""
from __future__ import annotations

import torch

from tinygpt.model.gpt import GPT

OPTIMIZERS = ("adamw", "muon")


def make_optimizer(model: GPT, weight_decay: float, learning_rate: float, betas: tuple[float, float],
                   device_type: str, params: list[torch.nn.Parameter] | None = None) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (Linear, Embedding) only; fused kernels on CUDA. `params`: a subset of
    the model's (default: all of them)."""
    if params is None:
        params = [p for p in model.parameters() if p.requires_grad]  # the tied weight appears once
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]  # biases and LayerNorm gains
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type == "cuda")


def hidden_matrices(model: GPT) -> list[tuple[str, torch.nn.Parameter]]:
    """The 2-D weights inside the transformer blocks (attention and MLP projections): what Muon steps.
    Embeddings (and the head tied to them), LayerNorms and biases are not hidden matrices."""
    return [(n, p) for n, p in model.named_parameters() if p.dim() == 2 and n.startswith("transformer.h.")]


class Optimizers:
    """The optimizers of one run, stepped together: {'adamw': AdamW} or {'muon': Muon, 'adamw': AdamW}.
    Each param group may carry `lr_scale`, its learning rate relative to the schedule's."""

    def __init__(self, named: dict[str, torch.optim.Optimizer]) -> None:
        self.named = named

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.named.values() for g in opt.param_groups]

    def set_lr(self, lr: float) -> None:
        for group in self.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    def unscale(self, scaler: torch.amp.GradScaler) -> None:
        for opt in self.named.values():
            scaler.unscale_(opt)

    def step(self, scaler: torch.amp.GradScaler) -> None:
        for opt in self.named.values():
            scaler.step(opt)

    def zero_grad(self) -> None:
        for opt in self.named.values():
            opt.zero_grad(set_to_none=True)

    def to_flat(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors named '<optimizer>.state.<param>.<key>', {'optimizers': {name: the JSON-able rest}})."""
        tensors, rests = {}, {}
        for name, opt in self.named.items():
            flat, rests[name] = optimizer_to_flat(opt)
            tensors.update({f"{name}.{key}": value for key, value in flat.items()})
        return tensors, {"optimizers": rests}

    def load_flat(self, tensors: dict[str, torch.Tensor], rest: dict) -> None:
        """Restore what `to_flat` wrote (or a single AdamW's state from before Muon). ValueError when the
        state was saved with other optimizers."""
        rests = rest.get("optimizers") or {"adamw": {k: rest[k] for k in ("param_groups", "scalars")}}
        if "optimizers" not in rest:  # the earlier layout: one AdamW, names without a prefix
            tensors = {f"adamw.{key}": value for key, value in tensors.items()}
        if set(rests) != set(self.named):
            saved = "muon" if "muon" in rests else "adamw"
            raise ValueError(f"the run was saved with --optimizer {saved}; resume it with --optimizer {saved}")
        for name, opt in self.named.items():
            mine = {key[len(name) + 1:]: value for key, value in tensors.items() if key.startswith(name + ".")}
            optimizer_from_flat(opt, mine, rests[name])


def make_optimizers(model: GPT, kind: str, weight_decay: float, learning_rate: float,
                    betas: tuple[float, float], device_type: str, muon_lr: float = 0.0) -> Optimizers:
    """`kind` 'adamw': AdamW on everything. 'muon': torch.optim.Muon on the hidden matrices, its step scaled to
    AdamW's RMS (so it shares the learning rate and weight decay; `muon_lr` > 0 sets its own peak), AdamW on
    the rest. Muon steps the gradients after DDP's all-reduce, so every rank takes the same step."""
    if kind not in OPTIMIZERS:
        raise ValueError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {kind!r}")
    if kind == "adamw":
        return Optimizers({"adamw": make_optimizer(model, weight_decay, learning_rate, betas, device_type)})
    hidden = [p for _, p in hidden_matrices(model)]
    ids = {id(p) for p in hidden}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    muon = torch.optim.Muon(hidden, lr=muon_lr or learning_rate, weight_decay=weight_decay,
                            adjust_lr_fn="match_rms_adamw")
    muon.param_groups[0]["lr_scale"] = (muon_lr / learning_rate) if muon_lr else 1.0
    return Optimizers({"muon": muon, "adamw": make_optimizer(model, weight_decay, learning_rate, betas,
                                                              device_type, params=rest)})


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
