"""Multi-process training under torchrun: process-group setup (NCCL on CUDA, gloo on CPU) and helpers."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Mapping, TypeVar

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launch_info(env: Mapping[str, str]) -> DistInfo:
    """This process's place in a torchrun launch, from the variables torchrun sets (the entry point passes
    process environment); single-process when they are absent."""
    if "RANK" not in env or int(env.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    return DistInfo(int(env["RANK"]), int(env["LOCAL_RANK"]), int(env["WORLD_SIZE"]))


def init_distributed(device_type: str, info: DistInfo) -> DistInfo:
    """Join the process group when `info` says this is one of several processes; else nothing to do."""
    if not info.enabled:
        return info
    if device_type == "mps":
        raise ValueError("torchrun with Apple MPS is not supported: torch.distributed has no MPS backend and gloo "
                         "cannot reduce MPS tensors. Train in one process: python train.py")
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(backend=backend)
    log.info("rank %d of %d (%s)", info.rank, info.world_size, backend)
    return info


def cleanup_distributed(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def mean_across(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The mean of a scalar tensor over all processes (itself when single-process)."""
    if not info.enabled:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / info.world_size


def any_across(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every process if it is true on any (so all ranks stop together)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def from_main(value: int, info: DistInfo, device: torch.device) -> int:
    """Rank 0's `value` on every process (plans made from timings, which differ between ranks)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.long, device=device)
    dist.broadcast(t, src=0)
    return int(t.item())


class RankFailed(RuntimeError):
    """Rank 0 failed at work the others waited for; its own error is in its output."""


def run_on_main(work: Callable[[], T], info: DistInfo, device: torch.device, what: str = "") -> T | None:
    """`work()` on rank 0 only, then every rank learns whether it failed: on a failure (a full disk while saving,
    say) all stop now, instead of the others waiting in their next collective until a timeout. Rank 0 raises its
    own exception; the others RankFailed. Returns rank 0's result there, None elsewhere."""
    result, error = None, None
    if info.is_main:
        try:
            result = work()
        except Exception as e:  # noqa: BLE001 - re-raised below, after the others are told
            error = e
    if any_across(error is not None, info, device):
        if error is not None:
            raise error
        raise RankFailed(f"rank 0 failed {what} (its error is above); this rank stops too")
    return result
