"""The compute thread: jobs run on it with their results and errors handed back, loops run until idle and again
when woken, and a server loads and decodes every model on that one thread."""
import threading
import time

import pytest
import torch

from tests.conftest import TINY
from tinygpt import GPT, save_checkpoint
from tinygpt.inference.sampling import SamplingParams
from tinygpt.playground.registry import ModelRegistry
from tinygpt.serving import loading
from tinygpt.serving.compute_thread import ComputeThread


@pytest.fixture
def compute():
    thread = ComputeThread("test-compute")
    yield thread
    thread.close()


def test_a_call_runs_on_the_thread_and_hands_back_its_result_or_error(compute):
    """Catches a call run on the caller's thread (its OpenMP team would be a second one) or an error lost."""
    assert compute.call(lambda x: (x, threading.current_thread().name), 3) == (3, "test-compute")
    with pytest.raises(ValueError, match="bad prompt"):
        compute.call(lambda: (_ for _ in ()).throw(ValueError("bad prompt")))
    assert compute.call(lambda: compute.call(lambda: 5)) == 5  # a call from the thread itself runs at once


def test_a_loop_runs_until_idle_and_again_when_woken_and_a_broken_one_is_dropped(compute):
    """Catches a loop that spins while idle (taking the CPU from the server), one never woken for new work, and
    a failing loop that stops the thread."""
    work, calls = [3], []

    def loop():
        calls.append(work[0])
        work[0] = max(0, work[0] - 1)
        return work[0] > 0

    compute.attach(loop)
    compute.attach(lambda: 1 / 0)  # logged and detached
    time.sleep(0.2)
    assert calls == [3, 2, 1]  # then idle: no further calls
    work[0] = 1
    compute.wake()
    time.sleep(0.2)
    assert calls == [3, 2, 1, 1] and compute.call(lambda: "still running") == "still running"


def test_a_detached_method_is_no_longer_called(compute):
    """Catches detach comparing by identity: `obj.method` is a new object each time, so a warm-up (or a reload)
    that had finished was still called after every step, logging "fast path" again after each story."""
    class Work:
        calls = 0

        def loop(self) -> bool:
            self.calls += 1
            return False

    work = Work()
    compute.attach(work.loop)
    compute.call(lambda: None)
    compute.detach(work.loop)
    before = work.calls
    for _ in range(3):
        compute.wake()
        compute.call(lambda: None)
    assert work.calls == before


def test_a_server_loads_and_decodes_every_model_on_one_thread(tmp_path, monkeypatch):
    """Catches a model loaded on one thread and decoded on another, or a second model with a batching thread of
    its own: each thread that runs torch's parallel ops keeps an OpenMP team, and with more team threads than
    cores every step waits for sleeping workers (the 30M model's step: 4.3 ms instead of 1.3 ms on 2 cores)."""
    torch.manual_seed(0)
    one, two = (save_checkpoint(GPT(TINY), tmp_path / name) for name in ("one", "two"))
    threads, load, call = set(), loading._load, torch.nn.Module.__call__

    def load_here(*args):
        threads.add(threading.current_thread())
        return load(*args)

    def forward(module, *args, **kwargs):
        if isinstance(module, GPT):
            threads.add(threading.current_thread())
        return call(module, *args, **kwargs)

    monkeypatch.setattr(loading, "_load", load_here)
    monkeypatch.setattr(torch.nn.Module, "__call__", forward)
    reg = ModelRegistry(loading.ServeConfig(compile=False, checkpoint=str(one), compare=(str(two),)),
                        default_dir=tmp_path / "out" / "best")
    assert len(reg.models) == 2
    for loaded in reg.models.values():
        assert len(list(loaded.batcher.generate([1, 2, 3], SamplingParams(temperature=0, max_new_tokens=4)))) == 4
    assert threads == {reg.compute._thread}
