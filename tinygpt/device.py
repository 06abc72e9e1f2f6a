"""Choosing the device (CUDA, then MPS, then CPU) and the compute dtype, once, with the reason logged."""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(requested: str | None = None) -> torch.device:
    """`requested` ('cuda', 'cuda:1', 'mps', 'cpu') if given and available, else the best there is."""
    if requested and requested != "auto":
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for, but torch sees no CUDA GPU; use --device cpu")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError("--device mps was asked for, but MPS is not available; use --device cpu")
        log.info("device %s (asked for)", device)
        return device
    if torch.cuda.is_available():
        device, why = torch.device("cuda"), f"CUDA GPU found: {torch.cuda.get_device_name()}"
    elif torch.backends.mps.is_available():
        device, why = torch.device("mps"), "Apple MPS found"
    else:
        device, why = torch.device("cpu"), "no CUDA or MPS device found"
    log.info("device %s (%s)", device, why)
    return device


def pick_dtype(device: torch.device, requested: str | None = None) -> torch.dtype:
    """Autocast dtype: bf16 where the device does it well, fp16 on older CUDA GPUs, else fp32."""
    if requested and requested != "auto":
        if requested not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)} or 'auto', got {requested!r}")
        log.info("dtype %s (asked for)", requested)
        return DTYPES[requested]
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            dtype, why = torch.bfloat16, "CUDA GPU supports bf16"
        else:
            dtype, why = torch.float16, "CUDA GPU lacks bf16; fp16 with a GradScaler"
    else:
        dtype, why = torch.float32, f"{device.type}: fp32 is the safe default (ask for bfloat16 to try it)"
    log.info("dtype %s (%s)", str(dtype).removeprefix("torch."), why)
    return dtype
