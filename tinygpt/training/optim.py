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


class Muon(torch.optim.Muon):
    """torch.optim.Muon (its arguments, defaults and state, so a run resumes across the two) with the
    Newton-Schulz iterations in `ns_dtype`. torch's run in bf16, which a CPU without bf16 matrix units (most
    laptops; AMD Zen 3) computes about 60x slower than fp32: half a second per matrix, four times the cpu
    preset's whole step there. The learning rate is matched to AdamW's RMS (torch's "match_rms_adamw")."""

    def __init__(self, params, ns_dtype: torch.dtype = torch.bfloat16, **kwargs) -> None:
        super().__init__(params, adjust_lr_fn="match_rms_adamw", **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None) -> None:
        if closure is not None:
            raise ValueError("Muon.step takes no closure here")
        for group in self.param_groups:
            params, grads, momenta = [], [], []
            self._init_group(group, params, grads, momenta)
            lr, momentum = group["lr"], group["momentum"]
            for p, grad, buf in zip(params, grads, momenta):
                buf.lerp_(grad, 1 - momentum)
                update = grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = orthogonalize(update, group["ns_coefficients"], group["ns_steps"], group["eps"],
                                       self.ns_dtype)
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update, alpha=-lr * 0.2 * max(p.shape[:2]) ** 0.5)  # AdamW's update RMS is about 0.2


def orthogonalize(grad: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype) -> torch.Tensor:
    """Muon's quintic Newton-Schulz iteration (as torch.optim.Muon's, in `dtype`): about U Vᵀ of grad = U S Vᵀ,
    every singular value moved near 1."""
    a, b, c = coefficients
    x = grad.to(dtype)
    tall = grad.size(0) > grad.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)  # spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def newton_schulz_dtype(device_type: str) -> torch.dtype:
    """bf16 on CUDA (tensor cores, as torch does); fp32 elsewhere: CPUs without bf16 units emulate it ~60x slower,
    and on those with them fp32 costs about 16 x 8 ms a step at the cpu preset."""
    return torch.bfloat16 if device_type == "cuda" else torch.float32


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
    muon = Muon(hidden, lr=muon_lr or learning_rate, weight_decay=weight_decay,
                ns_dtype=newton_schulz_dtype(device_type))
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
