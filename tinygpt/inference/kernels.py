"""Our own CPU kernels (kernels_matmul.cpp, kernels_amx*.cpp, kernels_topk.cpp, kernels_attention.cpp): built on
first use with the machine's C++ compiler against the installed torch's stable C ABI into one library, and loaded
as torch ops (`torch.ops.tinygpt.int8_linear`, `.int4_linear`, their `_amx` twins, `.topk`, `.cache_attention`), which torch.compile calls like any
other op. One build per machine, about 10 s, cached in the temporary directory under a name that hashes the
sources, the flags and the torch version.

They are for x86-64 CPUs with AVX2, where they beat PyTorch's weight-only kernels: 1.5-1.9x where bf16 is emulated
(AVX2 alone); on a CPU with native bf16 and AVX-512 VNNI (AMD Zen 5), built for it, the 30M model's compiled
int4 step took 0.66 ms against 1.11 ms with PyTorch's at batch 1, and 3.31 against 6.36 ms at 16; on an Intel Xeon
with AMX, 0.99 against 1.67 ms at 1, 4.38 against 10.58 at 16, and 2.31 at 16 with its tiles (kernels_amx*.cpp,
built where the CPU has them). Elsewhere (not Linux on x86-64 with AVX2,
torch < 2.10, no compiler) `load()` returns False with the reason logged, and tinygpt.inference.quantize serves
with PyTorch's own kernels instead.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch

log = logging.getLogger(__name__)
SOURCES = tuple(Path(__file__).with_name(f"kernels_{part}.cpp") for part in ("matmul", "amx", "amx_int4", "topk",
                                                                               "attention"))
HEADERS = tuple(Path(__file__).with_name(f"kernels_{part}.h") for part in ("rows", "amx"))
# every AVX2 CPU also has FMA and F16C
FLAGS = ("-O3", "-std=c++17", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-shared", "-fPIC")
# 8-bit dot products in one instruction, the same sums: AVX-512 VNNI (the int4 kernel in 512-bit registers), else
# AVX-VNNI (Intel since Alder Lake)
VNNI = (  # (what /proc/cpuinfo must list, the flags): the first match; AMX's tiles (kernels_amx.cpp) with it
    (("amx_int8", "amx_tile", "avx512_vnni", "avx512vl", "avx512bw", "avx512dq"),
     ("-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512vnni", "-mamx-tile", "-mamx-int8")),
    (("avx512_vnni", "avx512vl", "avx512bw", "avx512dq"),
     ("-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512vnni")),
    (("avx_vnni",), ("-mavxvnni",)),
)


def unsupported() -> str | None:
    """Why the kernels are not used here, or None if they are (a compiler is still needed: see `load`)."""
    if not (sys.platform == "linux" and platform.machine().lower() in ("x86_64", "amd64")):
        return f"they are written for Linux on x86-64 (this is {sys.platform} on {platform.machine()})"
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return "this CPU has no AVX2"
    if tuple(int(p) for p in torch.__version__.split(".")[:2]) < (2, 10):
        return f"torch {torch.__version__} predates the stable C ABI they use (2.10)"
    return None


_LOCK = threading.Lock()  # two threads loading models at once must not build or register twice


def load() -> bool:
    """Build (once per machine) and load the kernels; False, with the reason logged, where they cannot be."""
    with _LOCK:
        return _load() is not None


@functools.cache
def amx() -> bool:
    """Whether the loaded kernels multiply on AMX tiles (`torch.ops.tinygpt.int8_linear_amx`): built for a CPU
    with them, and the OS lets this process use them."""
    library = _load() if load() else None
    return library is not None and ctypes.CDLL(str(library)).tinygpt_amx_ready() == 1


@functools.cache
def _load() -> Path | None:
    """The loaded library's path, or None."""
    reason = unsupported()
    compiler = shutil.which("c++") or shutil.which("g++")
    if reason is None and compiler is None:
        reason = "no C++ compiler (c++ or g++) on the PATH"
    if reason is not None:
        log.info("tinygpt's CPU kernels are not used: %s; PyTorch's kernels serve instead", reason)
        return None
    try:
        library = _build_for_this_cpu(compiler)
        torch.ops.load_library(str(library))
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("tinygpt's CPU kernels could not be built or loaded (%s); PyTorch's kernels serve "
                    "instead", str(e).strip().splitlines()[-1][:300] if str(e).strip() else type(e).__name__)
        return None
    torch.library.register_fake("tinygpt::int8_linear")(_output_like)
    torch.library.register_fake("tinygpt::int8_linear_amx")(_output_like)
    torch.library.register_fake("tinygpt::int4_linear")(_output_like)
    torch.library.register_fake("tinygpt::int4_linear_amx")(_output_like)
    torch.library.register_fake("tinygpt::topk")(_topk_like)
    torch.library.register_fake("tinygpt::cache_attention")(_attention_like)
    return library


def topk(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) of the k largest in each row of a (B, N) fp32 matrix, descending, ties broken by the
    lower index: torch.topk's answer, found in one pass over each row (after `load()` returned True)."""
    return torch.ops.tinygpt.topk(x.contiguous(), k)


def _topk_like(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return x.new_empty(x.shape[0], k), x.new_empty(x.shape[0], k, dtype=torch.long)


def cache_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Attention over a KV cache for fp32 queries q (B, nh, T, hs), keys and values (B, nh, max_len, hs): query t
    of stream b sees the slots up to positions[b, t], as KVCache.mask allows. Returns (B, nh, T, hs) (after
    `load()` returned True)."""
    B, nh, T, hs = q.shape
    y = torch.ops.tinygpt.cache_attention(q.transpose(1, 2).reshape(B, T, nh * hs), k, v, positions.contiguous())
    return y.view(B, T, nh, hs).transpose(1, 2)


def _attention_like(q: torch.Tensor, *_: torch.Tensor) -> torch.Tensor:
    return q.new_empty(q.shape)


def _output_like(x: torch.Tensor, *args: torch.Tensor | int | None) -> torch.Tensor:
    """Either matmul's output, (rows of x, n: its last argument) in fp32, for torch.compile's tracing."""
    return x.new_empty(x.shape[0], args[-1])


def vnni_flags(cpuinfo: str | None = None) -> tuple[str, ...]:
    """The compiler flags for this CPU's VNNI instructions (from /proc/cpuinfo), or () if it has none."""
    return next(iter(_vnni_choices(cpuinfo)), ())


def _vnni_choices(cpuinfo: str | None = None) -> list[tuple[str, ...]]:
    """Every entry of VNNI this CPU has, best first."""
    try:
        words = set((Path("/proc/cpuinfo").read_text() if cpuinfo is None else cpuinfo).split())
    except OSError:
        return []
    return [flags for needs, flags in VNNI if words.issuperset(needs)]


def _build_for_this_cpu(compiler: str) -> Path:
    """The library with the best of this CPU's instructions that the compiler takes, else plain AVX2."""
    for extra in _vnni_choices():
        try:
            return _build(compiler, FLAGS + extra)
        except subprocess.SubprocessError as e:
            log.info("building with %s failed (%s); trying fewer instructions", " ".join(extra), e)
    return _build(compiler, FLAGS)


def _build(compiler: str, flags: tuple[str, ...]) -> Path:
    """The shared library for this source, flags and torch: built into the cache unless it is there already.
    Written under a temporary name and renamed into place, so a build cut short leaves nothing half-written."""
    torch_dir = Path(torch.__file__).parent
    source = b"".join(path.read_bytes() for path in SOURCES + HEADERS)
    key = hashlib.sha256(source + " ".join(flags).encode() + torch.__version__.encode()).hexdigest()[:16]
    cache = Path(tempfile.gettempdir()) / f"tinygpt-kernels-{os.getuid()}"
    target = cache / f"kernels-{key}.so"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / f".{target.name}.{os.getpid()}"
    cmd = [compiler, *flags, f"-I{torch_dir / 'include'}", *map(str, SOURCES), "-o", str(partial),
           f"-L{torch_dir / 'lib'}", "-ltorch_cpu", "-lc10", f"-Wl,-rpath,{torch_dir / 'lib'}"]
    log.info("building tinygpt's CPU kernels (once per machine, a few seconds)")
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
    except subprocess.CalledProcessError as e:
        partial.unlink(missing_ok=True)
        errors = [line for line in e.stderr.splitlines() if "error" in line] or e.stderr.splitlines()[-1:]
        raise subprocess.SubprocessError(f"{compiler} failed: {errors[0][:300] if errors else e.returncode}") from e
    os.replace(partial, target)
    return target
