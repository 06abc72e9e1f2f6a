"""A server's fast path prepared in the background: its page and its first stories do not wait for the compiler.

A served model decodes eagerly from the start: with our CPU kernels where an earlier start built them, else with
PyTorch's. The slow part of the fast path (building our kernels, about 10 s, and compiling the decode step for
every batch size, a minute or more on a first start) runs in a helper process at low priority,
`python -m tinygpt.serving.warmup`, which leaves its results in the on-disk caches (the kernel library,
Inductor's compiled code). Then, on the server's compute thread and only while no story is being written, the
model takes them up: a serving copy with our kernels if it had none, then one compiled batch size at a time, a
second or two each from the caches. Not a thread of the server: torch work on a second thread starts a second
OpenMP team (see tinygpt.serving.compute_thread), and compiling on the compute thread would stop every story.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from tinygpt import kernels
from tinygpt.inference.engine import Engine
from tinygpt.kernels.quantize import PRECISIONS, for_serving
from tinygpt.model.checkpoint import load_checkpoint
from tinygpt.serving.batching import Batcher
from tinygpt.serving.compute_thread import ComputeThread

log = logging.getLogger(__name__)
HELPER_TIMEOUT_S = 1800
WARMING, READY, EAGER = "warming up", "ready", "eager"  # WarmUp.state


def uses_our_kernels(precision: str, device: torch.device) -> bool:
    """Whether a serving copy in `precision` on `device` would run on our CPU kernels where they are built."""
    return precision in ("int8", "int4") and device.type == "cpu" and kernels.unsupported() is None


def serving_engine(directory: Path, precision: str, device: torch.device, batch_sizes: tuple[int, ...],
                   build_kernels: bool) -> tuple[Engine, dict]:
    """An eager engine over a serving copy of the checkpoint in `directory` (our kernels: built if need be when
    `build_kernels`, else only if already built), and the checkpoint's config.json."""
    model, info = load_checkpoint(directory, device)
    return Engine(for_serving(model, precision, build_kernels=build_kernels), batch_sizes=batch_sizes), info


class WarmUp:
    """Takes one served model (its `batcher`, serving the checkpoint in `directory`) to its fast path; `state`
    says how far it is (WARMING, then READY, or EAGER where compiling failed). Helpers run one at a time under
    `one_at_a_time` (a server with several models shares it)."""

    def __init__(self, batcher: Batcher, compute: ComputeThread, directory: Path, precision: str,
                 one_at_a_time: threading.Lock | None = None) -> None:
        self.batcher, self.compute, self.directory, self.precision = batcher, compute, directory, precision
        engine = batcher.engine
        self.device, self.batch_sizes = engine.device, engine.batch_sizes
        self.kernels_to_load = uses_our_kernels(precision, self.device) and not kernels.loaded()
        self.state, self._lock, self._t0 = WARMING, one_at_a_time or threading.Lock(), time.perf_counter()
        threading.Thread(target=self._run_helper, name="tinygpt-warmup", daemon=True).start()

    def helper_command(self) -> list[str]:
        return [sys.executable, "-m", "tinygpt.serving.warmup", str(self.directory), "--precision", self.precision,
                "--device", str(self.device), "--batch-sizes", ",".join(map(str, self.batch_sizes)), "--watch-stdin"]

    def _run_helper(self) -> None:
        with self._lock:
            log.info("preparing the fast decode step in the background; stories are decoded eagerly until then")
            try:
                done = run_helper(self.helper_command()) == 0
            except (OSError, subprocess.SubprocessError) as e:
                log.warning("the warm-up helper could not run (%s)", e)
                done = False
        if not done:
            log.warning("the fast decode step could not be prepared; stories stay eager (slower)")
            self.state = EAGER
            return
        self.compute.attach(self._take_over)

    def _take_over(self) -> bool:
        """On the compute thread, called between steps: one piece of the take-over while no story runs."""
        if sum(self.batcher.load()):
            return True  # stories are being written: wait for a quiet moment (this loop is called between steps)
        if self.kernels_to_load:
            self.kernels_to_load = False
            if kernels.load(build=False):  # the helper built them: a copy on them replaces PyTorch's kernels
                self.batcher.replace_engine(serving_engine(self.directory, self.precision, self.device,
                                                           self.batch_sizes, build_kernels=False)[0])
            return True
        engine = self.batcher.engine
        sizes = engine.uncompiled_sizes()
        if sizes and engine.compile_size(sizes[0]) and len(sizes) > 1:
            return True
        self.state = READY if engine.compiled else EAGER
        log.info("fast path: decode step %s, %.1f s after the model was loaded", fast_path(engine),
                 time.perf_counter() - self._t0)
        self.compute.detach(self._take_over)
        return False


def fast_path(engine: Engine) -> str:
    """What the engine's decode step is, for the log line that says the fast path has taken over."""
    if engine.one_pass_step is not None:
        return "in one pass per token"
    return f"compiled for batch sizes {engine.batch_sizes}" if engine.compiled else "stays eager"


def run_helper(command: list[str], timeout: float = HELPER_TIMEOUT_S) -> int:
    """Run the helper and wait for it; its exit status. Neither it nor what it starts (compiler processes,
    Inductor's compile workers) may outlive the server, however the server ends (a Space, systemd or a container
    stop sends SIGTERM to the server alone, and SIGKILL leaves no time to clean up). So on POSIX the helper leads
    its own process group, and ends the whole group (`end_family`) when its standard input closes (a pipe whose
    only writer is this process: `watch_parent`) or, on Linux, when the kernel sends it SIGTERM as the thread
    that started it ends."""
    posix = os.name == "posix"
    # `python -m tinygpt...` must find this package wherever the server was started from (app.py puts its own
    # folder on the server's path; the helper only gets the working directory)
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env,
                            preexec_fn=_helper_start(os.getpid()) if posix else None, close_fds=True)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        log.warning("the warm-up helper took over %.0f s; stopped", timeout)
        if posix:
            os.killpg(proc.pid, signal.SIGKILL)  # its group: the compilers it started too
        else:
            proc.kill()
        return proc.wait()
    finally:
        proc.stdin.close()


def _helper_start(server: int):
    """What the helper runs between fork and exec: the server's stories come first (nice 10), a process group of
    its own (so its family can be ended at once), and on Linux the parent-death signal (checked after it is
    set: the server may already be gone). SIGTERM, not SIGKILL: the helper's handler ends its children too,
    and before the handler is installed the default action ends a helper that has none yet. prctl is looked up
    here, before the fork: the child of a threaded server should only call it."""
    prctl = None
    if sys.platform.startswith("linux"):
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl

    def start() -> None:
        os.nice(10)
        os.setpgid(0, 0)
        if prctl is not None:
            prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
            if os.getppid() != server:
                os._exit(1)
    return start


def end_family(*_signal) -> None:
    """In the helper: end it and, when it leads its own process group (as `run_helper` starts it), everything
    it started: a compiler or compile worker left behind would keep a core busy for minutes. Nothing is lost:
    the caches it fills are written whole."""
    log.info("the server has gone; stopping")
    if os.name == "posix" and os.getpgid(0) == os.getpid():
        os.killpg(0, signal.SIGKILL)
    os._exit(1)


def watch_parent(fd: int = 0) -> threading.Thread:
    """In the helper: `end_family` when its standard input (`fd`) closes, i.e. when the server that holds the
    pipe's other end has ended, whatever ended it; and when the parent-death signal (SIGTERM) arrives. The raw
    descriptor, not sys.stdin: a thread blocked in sys.stdin's read holds its lock, and the interpreter's own
    exit then aborts on it (a helper that finished its work would report failure)."""
    signal.signal(signal.SIGTERM, end_family)

    def watch() -> None:
        while os.read(fd, 4096):
            pass
        end_family()
    thread = threading.Thread(target=watch, name="tinygpt-watch-parent", daemon=True)
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> int:
    """`python -m tinygpt.serving.warmup CHECKPOINT ...`: build the kernels and compile the decode step into
    the on-disk caches (what a WarmUp runs; exit status 0 when the step compiled)."""
    p = argparse.ArgumentParser(prog="python -m tinygpt.serving.warmup", description=main.__doc__)
    p.add_argument("checkpoint", type=Path, help="a local checkpoint directory")
    p.add_argument("--precision", choices=PRECISIONS, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-sizes", required=True, type=lambda text: tuple(int(b) for b in text.split(",")),
                   help="comma-separated, e.g. 1,2,4")
    p.add_argument("--watch-stdin", action="store_true",
                   help="exit when standard input closes (a server's helper: it ends with the server)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s warm-up %(message)s", datefmt="%H:%M:%S")
    if args.watch_stdin:
        watch_parent()
    engine, _ = serving_engine(args.checkpoint, args.precision, torch.device(args.device), args.batch_sizes,
                               build_kernels=True)
    return 0 if engine.compile_all() else 1


if __name__ == "__main__":
    raise SystemExit(main())
