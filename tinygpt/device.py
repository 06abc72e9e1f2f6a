"""Choosing the device (CUDA, then MPS, then CPU) and the compute dtype, once, with the reason logged."""
from __future__ import annotations

import ctypes
import functools
import logging
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


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The instruction-set flags /proc/cpuinfo lists for this CPU (`cpuinfo`: that file's text instead), or
    none where there is no such file (not Linux)."""
    return _parse_flags(cpuinfo) if cpuinfo is not None else _this_cpu_flags()


@functools.cache
def _this_cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return _parse_flags(f.read())
    except OSError:
        return frozenset()


def _parse_flags(cpuinfo: str) -> frozenset[str]:
    line = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls in hardware (elsewhere bf16 is emulated and slower)."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"}) and torch.backends.mkldnn.is_available()


def cuda_half_dtype(device: torch.device) -> tuple[torch.dtype, str]:
    """bf16 where the GPU computes it natively (compute capability 8.0+: A100, RTX 30xx, H100, L4, ...), else
    fp16 (T4, V100, RTX 20xx: `torch.cuda.is_bf16_supported()` says yes there, through slow emulation without
    tensor cores, and torch.compile declines it). With the reason, for the log."""
    major, minor = torch.cuda.get_device_capability(device)
    if major >= 8:
        return torch.bfloat16, f"compute capability {major}.{minor} runs bf16 natively"
    return torch.float16, f"compute capability {major}.{minor} has no native bf16; fp16 with a GradScaler"


def pick_dtype(device: torch.device, requested: str | None = None) -> torch.dtype:
    """Autocast dtype: bf16 where the device does it well, fp16 on older CUDA GPUs, else fp32."""
    if requested and requested != "auto":
        if requested not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)} or 'auto', got {requested!r}")
        log.info("dtype %s (asked for)", requested)
        return DTYPES[requested]
    if device.type == "cuda":
        dtype, why = cuda_half_dtype(device)
    elif device.type == "cpu" and cpu_has_native_bf16():
        dtype, why = torch.bfloat16, "the CPU has native bf16 instructions"
    else:
        dtype, why = torch.float32, f"{device.type}: fp32 is the safe default (ask for bfloat16 to try it)"
    log.info("dtype %s (%s)", str(dtype).removeprefix("torch."), why)
    return dtype


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt() parameter numbers (malloc.h)


def set_malloc_thresholds(small_model: bool) -> bool:
    """Set glibc malloc thresholds suited to the model's size, in this process (mallopt; Linux + glibc only).

    Training allocates and frees its activations every step. Small models: serve even large buffers from the
    heap and keep freed memory (2 GB mmap and trim thresholds) instead of returning it and page-faulting it in
    again, which is faster. Large models: a fixed 128 KiB mmap threshold, so big buffers always go back to the
    OS; glibc's default raises the threshold as buffers are freed, and the heap then grows by fragments. Either
    call also turns off glibc's dynamic threshold. Returns whether the setting was applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        if small_model:
            ok = libc.mallopt(M_MMAP_THRESHOLD, 2_000_000_000) and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
        else:
            ok = libc.mallopt(M_MMAP_THRESHOLD, 131072)
    except (OSError, AttributeError):  # musl and others: no mallopt, the allocator's defaults stay
        return False
    log.debug("malloc thresholds for a %s model: %s", "small" if small_model else "large", "set" if ok else "refused")
    return bool(ok)
