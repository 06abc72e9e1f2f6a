"""Choosing the device (CUDA, then MPS, then CPU) and the compute dtype, once, with the reason logged."""
from __future__ import annotations

import logging
import os
import sys

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


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls in hardware (elsewhere bf16 is emulated and slower)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:  # not Linux: stay with fp32
        return False
    return ("avx512_bf16" in flags or "amx_bf16" in flags) and torch.backends.mkldnn.is_available()


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
    elif device.type == "cpu" and cpu_has_native_bf16():
        dtype, why = torch.bfloat16, "CPU has native bf16 instructions (2x fp32 training measured here)"
    else:
        dtype, why = torch.float32, f"{device.type}: fp32 is the safe default (ask for bfloat16 to try it)"
    log.info("dtype %s (%s)", str(dtype).removeprefix("torch."), why)
    return dtype


def set_malloc_thresholds(small_model: bool) -> None:
    """Re-exec the running script once with glibc malloc thresholds suited to the model's size (Linux only).

    Training allocates and frees its activations every step. Small models: keep freed buffers (2 GB mmap and
    4 GB trim thresholds) instead of page-faulting them in again, measured 1.4x the tokens/s for
    `train.py --preset cpu` on a 2-core CPU. Large models: a fixed 128 KiB mmap threshold, so big buffers are
    always returned to the OS; glibc's default raises the threshold as buffers are freed, and the heap then
    grows by fragments. glibc reads these variables only at process start, hence the exec.
    """
    if sys.platform.startswith("linux") and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        extra = {"MALLOC_MMAP_THRESHOLD_": "2000000000", "MALLOC_TRIM_THRESHOLD_": "4000000000"} if small_model \
            else {"MALLOC_MMAP_THRESHOLD_": "131072"}
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **extra})
