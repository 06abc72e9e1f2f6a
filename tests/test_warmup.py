"""Serving before the compiler: a model loaded for a server decodes eagerly at once, its fast path (our kernels,
the compiled step) is prepared by a helper process and taken up only between stories, and a helper that fails
leaves a working eager server."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY
from tinygpt import GPT, save_checkpoint
from tinygpt import kernels
from tinygpt.inference.engine import Engine
from tinygpt.inference.sampling import SamplingParams
from tinygpt.playground.registry import ModelRegistry
from tinygpt.playground.ui import warming_text
from tinygpt.serving import warmup
from tinygpt.serving.batching import Batcher
from tinygpt.serving.loading import ServeConfig

ROOT = Path(__file__).resolve().parents[1]
GREEDY = SamplingParams(temperature=0, max_new_tokens=12, stop_at_eot=False)


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    return save_checkpoint(GPT(TINY), tmp_path / "ckpt")


def wait_until(condition, timeout=300.0):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def story(batcher, params=GREEDY):
    return [t.id for t in batcher.generate([464, 1310], params)]


def test_a_batch_runs_compiled_only_at_the_sizes_compiled_so_far(tiny_model):
    """Catches padding to a batch size whose step is not compiled yet (it would run an uncompiled size through
    the compiled graph's guards-skipping call), or a cache too small once more sizes compile."""
    engine = Engine(tiny_model, batch_sizes=(1, 4))
    assert engine.padded_size(3) == 3 and engine.rows_needed(3) == 4 and engine.uncompiled_sizes() == (1, 4)
    assert engine.compile_size(1) and not engine.compiled
    assert engine.padded_size(1) == 1 and engine.padded_size(3) == 3  # no compiled size fits 3: eager
    assert engine.compile_size(4) and engine.compiled and engine.padded_size(3) == 4


def test_streams_running_when_the_engine_is_replaced_carry_on_unchanged(tiny_model):
    """Catches a replacement engine whose fresh cache is not refilled: the streams already running would go
    on from an empty cache and write nonsense from that token on."""
    alone = Batcher(Engine(tiny_model), max_batch=2)
    expected = story(alone)
    alone.close()
    batcher = Batcher(Engine(tiny_model), max_batch=2)
    tokens = batcher.generate([464, 1310], GREEDY)
    got = [next(tokens).id for _ in range(5)]
    batcher.compute.call(batcher.replace_engine, Engine(tiny_model))
    got += [t.id for t in tokens]
    batcher.close()
    assert got == expected


def test_kernels_are_not_built_when_only_a_built_library_may_be_loaded(tmp_path):
    """Catches load(build=False) building anyway (10 s on the compute thread before the page opens), or
    deciding for the process, so that the library the helper builds later could never be loaded."""
    code = ("import sys; from pathlib import Path; from tinygpt import kernels; c = Path(sys.argv[1]); "
            "print(kernels.load(c, build=False), kernels._LIBRARY.tried, sorted(p.name for p in c.glob('*.so')))")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "kernels")], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.stdout.split() == ["False", "False", "[]"], r.stderr


def test_a_failed_helper_leaves_an_eager_server_that_writes_stories(tmp_path, ckpt, monkeypatch):
    """Catches a warm-up that never ends when its helper fails (the page would say "warming up" for ever), or
    that breaks serving."""
    monkeypatch.setattr(warmup.WarmUp, "helper_command", lambda self: [sys.executable, "-c", "raise SystemExit(1)"])
    registry = ModelRegistry(ServeConfig(checkpoint=str(ckpt), precision="fp32", concurrency=2))
    loaded = registry.served
    wait_until(lambda: not loaded.warming, timeout=60)
    assert loaded.warmup.state == warmup.EAGER and not loaded.engine.compiled and warming_text(registry) == ""
    assert len(story(loaded.batcher)) == GREEDY.max_new_tokens
    loaded.batcher.close()


def test_the_compiled_step_is_taken_up_only_between_stories(tmp_path, ckpt, monkeypatch):
    """Catches compiling while a story is being written (every story on the server would stop for seconds):
    with a helper that ends at once, a long story is started first; no batch size may compile before it ends,
    and after it the server compiles every size and writes the same greedy story."""
    go = tmp_path / "go"  # the helper ends once the story is under way
    wait = f"import pathlib, time\nwhile not pathlib.Path({str(go)!r}).exists(): time.sleep(0.01)"
    monkeypatch.setattr(warmup.WarmUp, "helper_command", lambda self: [sys.executable, "-c", wait])
    busy_at_compile = []
    real = Engine.compile_size

    def compile_size(engine, B):
        busy_at_compile.append(sum(registry.served.batcher.load()))
        return real(engine, B)

    monkeypatch.setattr(Engine, "compile_size", compile_size)
    registry = ModelRegistry(ServeConfig(checkpoint=str(ckpt), precision="fp32", concurrency=2))
    loaded = registry.served
    assert loaded.warming and "Warming up" in warming_text(registry)
    long = SamplingParams(temperature=0, max_new_tokens=400, stop_at_eot=False)
    tokens = loaded.batcher.generate([464, 1310], long)
    before = [next(tokens).id]
    go.touch()
    before += [t.id for t in tokens]
    wait_until(lambda: not loaded.warming)
    assert loaded.warmup.state == warmup.READY and loaded.engine.compiled and warming_text(registry) == ""
    assert busy_at_compile == [0, 0]  # sizes 1 and 2, each while nothing was being written
    assert story(loaded.batcher, long) == before
    loaded.batcher.close()


TAKE_OVER = """
import json, sys, time
from tinygpt.inference.sampling import SamplingParams
from tinygpt.kernels.quantize import Int8Linear
from tinygpt.playground.registry import ModelRegistry
from tinygpt.serving.loading import ServeConfig
reg = ModelRegistry(ServeConfig(checkpoint=sys.argv[1], precision="int8", concurrency=2))
loaded, params = reg.served, SamplingParams(temperature=0, max_new_tokens=8, stop_at_eot=False)
ours = lambda: isinstance(loaded.model.transformer.h[0].mlp.c_fc, Int8Linear)
first = {"ours": ours(), "compiled": loaded.engine.compiled,
         "tokens": len(list(loaded.batcher.generate([464], params)))}
end = time.monotonic() + 600
while loaded.warming and time.monotonic() < end:
    time.sleep(0.1)
print(json.dumps({"first": first, "state": loaded.warmup.state, "ours": ours(), "compiled": loaded.engine.compiled,
                  "tokens": len(list(loaded.batcher.generate([464], params)))}))
"""


@pytest.mark.slow
@pytest.mark.skipif(kernels.unsupported() is not None, reason="our kernels do not run here")
def test_a_cold_server_serves_on_pytorch_kernels_then_takes_up_ours_compiled(tmp_path, ckpt):
    """Catches a cold start that waits for the kernel build or the compiler before the first story, or a
    warm-up that never moves onto our kernels: with empty caches, the first story comes from PyTorch's
    kernels, eagerly; once the helper has built and compiled, the server decodes on ours, compiled."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "ind")}
    r = subprocess.run([sys.executable, "-c", TAKE_OVER, str(ckpt)], capture_output=True, text=True, cwd=ROOT,
                       env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.splitlines()[-1])
    assert result["first"] == {"ours": False, "compiled": False, "tokens": 8}
    assert result == {**result, "state": "ready", "ours": True, "compiled": True, "tokens": 8}


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux's /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def descendants(pid: int) -> list[int]:
    """The processes `pid` started, and theirs, all the way down."""
    out = children(pid)
    return out + [d for c in out for d in descendants(c)]


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def gone_within(pids: list[int], seconds: float) -> list[int]:
    """The pids still running after `seconds` (at once when all are gone)."""
    end = time.monotonic() + seconds
    while any(map(alive, pids)) and time.monotonic() < end:
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

# A stand-in server: it starts a helper the way WarmUp does (run_helper) and waits on it.
SERVER = """
import sys
from tinygpt.serving.warmup import run_helper
run_helper([sys.executable, "-c", sys.argv[1]])
"""
WATCHING = "import time\nfrom tinygpt.serving.warmup import watch_parent\nwatch_parent()\ntime.sleep(120)"
NOT_WATCHING = "import time\ntime.sleep(120)"
# A helper busy in a child of its own, as when it runs a compiler or Inductor's compile workers.
WATCHING_A_CHILD = ("import subprocess, time\nfrom tinygpt.serving.warmup import watch_parent\nwatch_parent()\n"
                    "subprocess.Popen(['sleep', '120'])\ntime.sleep(120)")


@linux_only
@pytest.mark.parametrize("helper", [WATCHING, NOT_WATCHING], ids=["pipe", "parent-death-signal"])
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_a_helper_ends_with_its_server(helper, sig):
    """Catches a helper left compiling for up to 30 minutes after its server is gone (a Space, systemd or a
    container stop sends SIGTERM to the server alone). Each way out on its own: the pipe the helper watches
    (every OS), and Linux's parent-death signal for a helper that watches nothing."""
    import signal

    server = subprocess.Popen([sys.executable, "-c", SERVER, helper], cwd=ROOT)
    try:
        wait_until(lambda: children(server.pid), timeout=30)
        helpers = children(server.pid)
        time.sleep(1.0)  # the helper is past its start (watching, if it does)
        server.send_signal(getattr(signal, sig))
        server.wait(timeout=10)
        assert gone_within(helpers, 10) == []
    finally:
        server.kill()


@linux_only
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_what_the_helper_started_ends_with_its_server(sig):
    """Catches CI's orphan (a process of the helper's, parent 1, still running 10 s after its server was killed):
    the helper ended, but the compiler it had started did not."""
    import signal

    server = subprocess.Popen([sys.executable, "-c", SERVER, WATCHING_A_CHILD], cwd=ROOT)
    try:
        wait_until(lambda: [c for c in children(server.pid) if children(c)], timeout=30)
        family = descendants(server.pid)
        time.sleep(0.5)  # the helper is past its start
        server.send_signal(getattr(signal, sig))
        server.wait(timeout=10)
        assert len(family) == 2 and gone_within(family, 10) == []
    finally:
        server.kill()


def test_a_watching_helper_that_finishes_exits_cleanly():
    """Catches the watcher breaking the helper's own exit (a thread blocked in sys.stdin's read made the
    interpreter abort at shutdown: every warm-up 'failed' and no server took its fast path)."""
    finished = "from tinygpt.serving.warmup import watch_parent\nwatch_parent()\nprint('compiled')"
    helper = subprocess.Popen([sys.executable, "-c", finished], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:  # the pipe stays open, as the server holds it
        assert helper.wait(timeout=60) == 0, helper.stderr.read()[-2000:]
        assert helper.stdout.read() == "compiled\n"
    finally:
        helper.stdin.close()
        helper.kill()


def test_a_helper_run_by_hand_stays_while_its_input_is_open(tmp_path):
    """Catches a helper that quits when nobody is watching: only `--watch-stdin` ends it with its input."""
    helper = subprocess.Popen([sys.executable, "-c", WATCHING], cwd=ROOT, stdin=subprocess.PIPE)
    try:
        time.sleep(1.0)
        assert helper.poll() is None
        helper.stdin.close()  # the server's end of the pipe, as when the server dies
        assert helper.wait(timeout=10) == 1
    finally:
        helper.kill()


@pytest.mark.slow
@linux_only
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_a_warming_app_leaves_no_helper_behind(tmp_path, ckpt, sig):
    """Issue 32: `kill -TERM` to a warming app left `python -m tinygpt.serving.warmup` compiling, parent 1.
    The real app, started from another folder as a user may (a helper that could not import tinygpt from there
    ended at once: no fast path), cold caches (so the helper is still building and compiling), then the
    signal: within 10 s no helper, nor anything the helper started, is left."""
    import signal
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "ind")}
    app = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--checkpoint", str(ckpt), "--port", str(port),
                            "--precision", "int8"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        def helper_started() -> list[int]:
            return [p for p in children(app.pid)
                    if b"tinygpt.serving.warmup" in Path(f"/proc/{p}/cmdline").read_bytes()]
        wait_until(helper_started, timeout=120)
        time.sleep(3.0)  # well into its work
        helper = helper_started()
        family = helper + [d for p in helper for d in descendants(p)]
        assert alive(helper[0]), "the helper ended before the test could stop its server"
        app.send_signal(getattr(signal, sig))
        app.wait(timeout=10)
        assert gone_within(family, 10) == []
    finally:
        app.kill()
