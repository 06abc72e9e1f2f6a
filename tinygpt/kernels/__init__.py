"""Our own CPU kernels, and the one door to them: int8 and int4 matmuls on 8-bit integer multiplies, top-k over a
row of logits, attention over an fp16 KV cache, and a whole decode step in one pass (the C++ beside this file),
loaded as torch ops (`torch.ops.tinygpt.*`) that torch.compile calls like any other op.

The door, and who comes through it:
    load(), loaded(), unsupported(), amx()   build or find the library (the serving copies; the server's warm-up)
    topk(x, k)                               top-k of each row of logits (inference.engine, inference.vocab)
    cache_attention(q, k, v, positions)      one query row against the KV cache (quantize.KernelAttention)
    quantize.for_serving(model, precision)   the reduced-precision serving copies whose layers call the matmuls
                                             (serving, sharing, bench)
    one_pass.OnePassStep(serving copy, ...)  a whole decode step of such a copy, sampled, in one call
                                             (decode.cpp; inference.engine)

They are built with the machine's C++ compiler against the installed torch, the first time something asks for
them (`load()`: serving a model in int8 or int4 on a CPU, or `python -m tinygpt.kernels`), never at import (about
30 s on 2 cores). The
library goes to the user's cache folder (`$XDG_CACHE_HOME/tinygpt/kernels`, else `~/.cache/tinygpt/kernels`),
created private; a folder or library that another user owns or could have written is never loaded. Its name
hashes the sources, the compiler flags and the torch installation it links against. Where they cannot run (not
Linux on x86-64 with AVX2, torch < 2.10, no compiler), `load()` returns False with the reason logged and
tinygpt.kernels.quantize serves with PyTorch's kernels. bench/cpu_kernels.py measures each kernel against
PyTorch's.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from tinygpt.device import cpu_flags

log = logging.getLogger(__name__)
# the longest to compile first: a build runs them side by side
SOURCES = tuple(Path(__file__).with_name(f"{part}.cpp") for part in ("decode", "matmul", "amx", "amx_int4", "attention",
                                                                   "topk"))
HEADERS = tuple(Path(__file__).with_name(f"{part}.h") for part in ("rows", "amx", "dots", "attend", "rank",
                                                                   "sample"))
FLAGS = ("-O3", "-std=c++17", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-shared", "-fPIC")  # AVX2 CPUs have FMA, F16C
AVX512_VNNI = ("-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512vnni")
# Builds with more instructions, best first: (the flags /proc/cpuinfo must list, the compiler flags). AMX's tiles
# and AVX-512 VNNI (512-bit registers, one instruction for 8-bit dot products), else AVX-VNNI; plain AVX2 last.
BUILDS = (
    (("amx_int8", "amx_tile", "avx512f", "avx512_vnni", "avx512vl", "avx512bw", "avx512dq"),
     AVX512_VNNI + ("-mamx-tile", "-mamx-int8")),
    (("avx512f", "avx512_vnni", "avx512vl", "avx512bw", "avx512dq"), AVX512_VNNI),
    (("avx_vnni",), ("-mavxvnni",)),
)


class _Library:
    """The one library a process loads (torch registers its ops once): the first `load()` decides."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # two threads loading models at once must not build or register twice
        self.tried = False
        self.path: Path | None = None


_LIBRARY = _Library()


class UnsafeCacheError(OSError):
    """The kernel cache folder or a library in it could have been written by another user."""


def unsupported() -> str | None:
    """Why the kernels cannot be used here, or None if they can (a compiler is still needed: see `load`)."""
    if not (sys.platform == "linux" and platform.machine().lower() in ("x86_64", "amd64")):
        return f"they are written for Linux on x86-64 (this is {sys.platform} on {platform.machine()})"
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return "this CPU has no AVX2"
    if tuple(int(p) for p in torch.__version__.split(".")[:2]) < (2, 10):
        return f"torch {torch.__version__} predates the stable C ABI they use (2.10)"
    return None


def default_cache_dir() -> Path:
    """Where built libraries are kept: $XDG_CACHE_HOME/tinygpt/kernels, else ~/.cache/tinygpt/kernels."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tinygpt" / "kernels"


def load(cache_dir: Path | None = None, build: bool = True) -> bool:
    """Build (once per machine and torch installation) and load the kernels; False, with the reason logged,
    where they cannot be. The first call that tries decides for the whole process. With `build=False`, only a
    library already built is loaded: where there is none, False, and a later call may still build (a server
    starts on PyTorch's kernels and builds ours in the background)."""
    cache_dir = cache_dir or default_cache_dir()
    with _LIBRARY.lock:
        if not _LIBRARY.tried and (build or built(cache_dir) is not None):
            _LIBRARY.tried = True
            _LIBRARY.path = build_and_load(cache_dir)
        return _LIBRARY.path is not None


def loaded() -> bool:
    """Whether an earlier `load()` in this process succeeded (asking never builds anything)."""
    return _LIBRARY.path is not None


@functools.cache
def amx() -> bool:
    """Whether the loaded kernels multiply on AMX tiles (`torch.ops.tinygpt.int8_linear_amx`): built for a CPU
    with them, and the OS lets this process use them."""
    return load() and ctypes.CDLL(str(_LIBRARY.path)).tinygpt_amx_ready() == 1


def build_and_load(cache_dir: Path) -> Path | None:
    """Build (unless cached) and load the library into this process: its path, or None with the reason logged."""
    reason = unsupported()
    compiler = shutil.which("c++") or shutil.which("g++")
    if reason is None and compiler is None:
        reason = "no C++ compiler (c++ or g++) on the PATH"
    if reason is not None:
        log.info("tinygpt's CPU kernels are not used: %s; PyTorch's kernels serve instead", reason)
        return None
    try:
        library = _build_for_this_cpu(compiler, cache_dir)
        torch.ops.load_library(str(library))
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("tinygpt's CPU kernels could not be built or loaded (%s); PyTorch's kernels serve instead",
                    str(e).strip().splitlines()[-1][:300] if str(e).strip() else type(e).__name__)
        return None
    for op in ("int8_linear", "int8_linear_amx", "int4_linear", "int4_linear_amx"):
        torch.library.register_fake(f"tinygpt::{op}")(_output_like)
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


def build_choices(cpuinfo: str | None = None) -> list[tuple[str, ...]]:
    """The extra compiler flags of every build in BUILDS this CPU can run (from /proc/cpuinfo), best first."""
    flags = cpu_flags(cpuinfo)
    return [extra for needs, extra in BUILDS if flags.issuperset(needs)]


def built(cache_dir: Path) -> Path | None:
    """The library for this CPU already in `cache_dir` (the best of its instruction choices), else None."""
    compiler = shutil.which("c++") or shutil.which("g++")
    if unsupported() is not None or compiler is None or not cache_dir.is_dir():
        return None
    paths = (library_path(compiler, FLAGS + extra, cache_dir) for extra in [*build_choices(), ()])
    return next((path for path in paths if path.exists()), None)


def _build_for_this_cpu(compiler: str, cache_dir: Path) -> Path:
    """The library with the best of this CPU's instructions that the compiler takes, else plain AVX2 (one
    already built is taken as it is: a choice the compiler refused once is not retried at every start)."""
    if (ready := built(cache_dir)) is not None:
        private_dir(cache_dir)  # the folder is checked as a build checks it, then the library itself
        return check_private(ready)
    for extra in build_choices():
        try:
            return build(compiler, FLAGS + extra, cache_dir)
        except subprocess.SubprocessError as e:
            log.info("building with %s failed (%s); trying fewer instructions", " ".join(extra), e)
    return build(compiler, FLAGS, cache_dir)


def library_path(compiler: str, flags: tuple[str, ...], cache_dir: Path) -> Path:
    """Where the library for these sources, flags, compiler and torch installation is kept in `cache_dir`."""
    source = b"".join(path.read_bytes() for path in SOURCES + HEADERS)
    key = hashlib.sha256(b"\0".join([source, " ".join(flags).encode(), torch.__version__.encode(),
                                     str(Path(torch.__file__).resolve().parent).encode(), compiler.encode()]))
    return cache_dir / f"kernels-{key.hexdigest()[:16]}.so"


def build(compiler: str, flags: tuple[str, ...], cache_dir: Path) -> Path:
    """The shared library for these sources, flags and torch installation, built into `cache_dir` unless it is
    there already. Written under a temporary name and renamed into place, so a build cut short leaves nothing
    half-written. Raises UnsafeCacheError if the folder or the library could have been written by someone else."""
    torch_dir = Path(torch.__file__).resolve().parent
    target = library_path(compiler, flags, private_dir(cache_dir))
    if target.exists():
        return check_private(target)
    fd, partial = tempfile.mkstemp(prefix=f".{target.name}.", dir=cache_dir)
    os.close(fd)
    log.info("building tinygpt's CPU kernels into %s (once per machine, about 10 s)", cache_dir)
    try:
        with tempfile.TemporaryDirectory(prefix=".objects-", dir=cache_dir) as objects:
            # each source on its own core (a first start waits for this), then one link
            objs = [str(Path(objects) / f"{source.stem}.o") for source in SOURCES]
            _run_all([[compiler, *flags, f"-I{torch_dir / 'include'}", "-c", str(source), "-o", obj]
                      for source, obj in zip(SOURCES, objs)], compiler)
            _run_all([[compiler, *flags, *objs, "-o", partial, f"-L{torch_dir / 'lib'}", "-ltorch_cpu", "-lc10",
                       f"-Wl,-rpath,{torch_dir / 'lib'}"]], compiler)
        os.replace(partial, target)
    finally:
        Path(partial).unlink(missing_ok=True)
    return target


def _run_all(commands: list[list[str]], compiler: str) -> None:
    """Run the compiler commands side by side, as many at once as this process may use cores (the first given
    first: the longest); raises subprocess.SubprocessError naming the first error."""
    width = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    with ThreadPoolExecutor(max(1, min(width, len(commands)))) as pool:
        done = list(pool.map(lambda cmd: subprocess.run(cmd, capture_output=True, text=True, timeout=300), commands))
    for result in done:
        if result.returncode:
            errors = [line for line in result.stderr.splitlines() if "error" in line] or result.stderr.splitlines()[-1:]
            raise subprocess.SubprocessError(f"{compiler} failed: {errors[0][:300] if errors else result.returncode}")


def private_dir(path: Path) -> Path:
    """`path`, created 0700 if missing; UnsafeCacheError unless it is a real folder of ours that no one else can
    write (someone who could would choose the code `load` runs)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return check_private(path)


def check_private(path: Path) -> Path:
    """`path` if it is no symlink, is owned by this user and is not writable by group or others; else
    UnsafeCacheError saying what to do."""
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        problem = "is a symbolic link"
    elif st.st_uid != os.getuid():
        problem = f"is owned by another user (uid {st.st_uid}, you are {os.getuid()})"
    elif st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problem = f"is writable by others (mode {stat.filemode(st.st_mode)})"
    else:
        return path
    raise UnsafeCacheError(f"{path} {problem}, so it is not loaded; remove it, or set XDG_CACHE_HOME to a "
                           "folder of your own")


def main(argv: list[str] | None = None) -> int:
    """`python -m tinygpt.kernels`: build the kernels now and say which instructions they use."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m tinygpt.kernels", description=main.__doc__)
    p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not load():
        return 1
    choice = next(iter(build_choices()), ())
    log.info("kernels ready: %s (%s%s)", _LIBRARY.path, " ".join(choice) or "AVX2",
             ", AMX tiles in use" if amx() else "")
    return 0
