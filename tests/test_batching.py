"""Continuous batching on a tiny model: streams that share decode steps get the stories they would get alone,
leave and join between steps, and a full waiting line refuses with a message."""
import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY
from tinygpt.inference.engine import Engine, PositionError
from tinygpt.inference.sampling import SamplingParams
from tinygpt.serving.batching import Batcher, QueueFull, StoryFailed

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def batcher(trained_like):
    b = Batcher(Engine(trained_like), max_batch=4, max_waiting=2)
    yield b
    b.close()


REQUESTS = [  # each with its own settings and seed; one runs past the context; two of one length join together
    ([1, 2, 3], SamplingParams(temperature=1.0, top_k=20, seed=1, max_new_tokens=50, stop_at_eot=False)),
    ([4, 5, 6], SamplingParams(temperature=0.9, top_k=50, seed=5, max_new_tokens=40, stop_at_eot=False)),
    ([464], SamplingParams(temperature=0.7, top_k=200, top_p=0.9, seed=2, max_new_tokens=20, stop_at_eot=False)),
    (list(range(100, 130)), SamplingParams(temperature=0, max_new_tokens=3 * TINY.block_size, stop_at_eot=False)),
    ([7, 8], SamplingParams(temperature=1.2, top_k=0, top_p=0.95, seed=4, max_new_tokens=30, stop_at_eot=False)),
]


def run_together(batcher, requests, stagger=0.0):
    """Each request in its own thread, started `stagger` seconds apart; their token ids."""
    out = [None] * len(requests)

    def one(i, ids, params):
        out[i] = [t.id for t in batcher.generate(ids, params)]

    threads = [threading.Thread(target=one, args=(i, *r)) for i, r in enumerate(requests)]
    for t in threads:
        t.start()
        time.sleep(stagger)
    for t in threads:
        t.join(timeout=60)
    return out


@pytest.mark.parametrize("stagger", [0.0, 0.02])
def test_batched_streams_get_the_stories_they_get_alone(trained_like, batcher, stagger):
    """Catches rows mixed up in a batched step (another stream's cache row, settings or random draw), a stream
    joining mid-way that disturbs the others, and a slide inside a batch. fp32: exactly the same tokens."""
    engine = Engine(trained_like)
    alone = [[t.id for t in engine.generate(ids, params)] for ids, params in REQUESTS]
    assert run_together(batcher, REQUESTS, stagger) == alone
    assert batcher.load() == (0, 0)  # every row freed


def test_async_chunks_deliver_every_token_in_order_waking_the_reader_once_a_chunk(trained_like, batcher,
                                                                                  monkeypatch):
    """Catches lost or reordered tokens, and a reader woken for every token (each wake-up takes the server's
    thread from its sleep, and CPU from the model)."""
    ids, params = REQUESTS[0]
    signals, signal = [], batcher._signal
    monkeypatch.setattr(batcher, "_signal", lambda *a: (signals.append(1), signal(*a)))

    async def collect():
        return [chunk async for chunk in batcher.chunks(ids, params, interval=0.01)]

    chunks = asyncio.run(collect())
    assert [t.id for chunk in chunks for t in chunk] == [t.id for t in Engine(trained_like).generate(ids, params)]
    assert 1 < len(chunks) < params.max_new_tokens  # tokens were gathered, but not all at once
    assert len(signals) <= len(chunks) + 1


def slow_steps(monkeypatch, seconds=0.02):
    advance = Engine.advance

    def slow(self, *args):
        time.sleep(seconds)
        return advance(self, *args)

    monkeypatch.setattr(Engine, "advance", slow)


def wait_for(condition, timeout=5.0):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


def test_a_closed_stream_frees_its_row_at_once(batcher, monkeypatch):
    """Catches a stopped or abandoned stream that keeps decoding (and holding its slot) to the end."""
    slow_steps(monkeypatch)
    long = SamplingParams(max_new_tokens=1000, stop_at_eot=False)
    stream = batcher.generate([1, 2], long)
    next(stream)
    assert batcher.load() == (1, 0)
    stream.close()  # what the server does when the client stops or goes away
    wait_for(lambda: batcher.load() == (0, 0), timeout=0.5)


def test_a_full_queue_refuses_with_a_message(batcher, monkeypatch):
    """4 decoding + 2 waiting fill it; the next request is refused at once, saying why and what to do."""
    slow_steps(monkeypatch)
    long = SamplingParams(max_new_tokens=1000, stop_at_eot=False)
    requests = [batcher.submit([1], long) for _ in range(6)]
    with pytest.raises(QueueFull, match="busy.*try again"):
        batcher.submit([1], long)
    for r in requests:
        r.cancel()
    wait_for(lambda: batcher.load() == (0, 0))
    assert len(list(batcher.generate([1], SamplingParams(max_new_tokens=3)))) <= 3  # serving again


def test_a_failed_step_ends_its_streams_with_a_message_and_serving_goes_on(batcher, monkeypatch, caplog):
    """Catches a failed step that takes the batcher down, or ends its stories without a word for the reader."""
    advance = Engine.advance
    monkeypatch.setattr(Engine, "advance", lambda self, *a: (_ for _ in ()).throw(RuntimeError("out of memory")))
    with pytest.raises(StoryFailed, match="failed while writing this story.*Generate again"):
        list(batcher.generate([1], SamplingParams(max_new_tokens=3)))
    assert "out of memory" in caplog.text  # what went wrong is in the server's log
    monkeypatch.setattr(Engine, "advance", advance)
    assert len(list(batcher.generate([1], SamplingParams(max_new_tokens=3, stop_at_eot=False)))) == 3


def padded_like_compiled(engine: Engine) -> Engine:
    """`engine` padding each batch to its batch sizes as the compiled engine does (the eager step registered at
    every size), so that the padding rows run, without a compiler."""
    engine._pick = {B: engine._eager_pick for B in engine.batch_sizes}
    return engine


def submit_together(batcher, requests):
    """Submit on the compute thread, so that every request joins the same step, in rows 0, 1, ..."""
    return batcher.compute.call(lambda: [batcher.submit(ids, params) for ids, params in requests])


def ends_as_another_slides(block_size):
    """Row 0's story ends in the very step in which row 3's context reaches block_size and slides; rows 1-3 go on.
    Row 3 then moves into row 0, and the row it leaves is padding in the next step (3 streams padded to 4)."""
    greedy = lambda n: SamplingParams(temperature=0, max_new_tokens=n, stop_at_eot=False)  # noqa: E731
    last = 10
    return [([1] * 3, greedy(block_size - last + 1)), ([2] * 5, greedy(100)), ([3] * 7, greedy(100)),
            ([4] * last, greedy(100))]


def test_a_story_that_leaves_as_another_slides_leaves_no_row_past_the_context(tiny_model):
    """Issue 32's crash, at its source: a stream in the last row slid (its row at position block_size) in the
    step in which another ended; it moved into the freed row, and the row it left kept block_size and ran as
    padding in the next step. The compiled step's bounds check then aborted the server; here (eager, padded the
    same way) the other three stories failed with an IndexError."""
    engine = padded_like_compiled(Engine(tiny_model, batch_sizes=(1, 2, 4)))
    batcher = Batcher(engine, max_batch=4)
    try:
        requests = submit_together(batcher, ends_as_another_slides(TINY.block_size))
        wait_for(lambda: all(r.finished for r in requests), timeout=30)
        assert [len(r.take()[0]) for r in requests] == [TINY.block_size - 9, 100, 100, 100]
    finally:
        batcher.close()


def test_a_freed_row_goes_back_to_position_zero(tiny_model):
    """Catches a row freed by a story that ended (the last row, or one moved into a freed row) keeping its
    position, which a padded step would run from."""
    engine = padded_like_compiled(Engine(tiny_model, batch_sizes=(1, 2, 4)))
    batcher = Batcher(engine, max_batch=4)
    try:
        done = SamplingParams(temperature=0, max_new_tokens=1, stop_at_eot=False)
        going = SamplingParams(temperature=0, max_new_tokens=200, stop_at_eot=False)
        slow = [batcher.submit([5] * 20, going)]
        wait_for(lambda: batcher.load() == (1, 0))
        quick = submit_together(batcher, [([6] * 25, done), ([7] * 30, done)])
        wait_for(lambda: all(r.finished for r in quick))
        positions = batcher.compute.call(lambda: batcher.cache.pos.tolist())
        assert positions[1:3] == [0, 0]  # the two freed rows (row 3 was padding in the last step: position 1)
        slow[0].cancel()
    finally:
        batcher.close()


def test_a_position_outside_the_context_is_refused_before_the_step_runs(tiny_model):
    """The guard in front of the compiled step: a stream whose row would be past the last slot raises
    PositionError naming the row and position, and nothing runs (no token sampled, the cache untouched)."""
    engine = Engine(tiny_model)
    cache = engine.new_cache(1)
    stream = engine.new_stream([1] * TINY.block_size, SamplingParams(temperature=0))
    engine.advance(cache, [stream])  # loaded; the context then slides
    stream.context, stream.stale = [1] * (TINY.block_size + 1), False  # the state the bug left behind
    before = [kv.k.clone() for kv in cache.layers]
    with pytest.raises(PositionError, match=f"row 0 at {TINY.block_size}"):
        engine.advance(cache, [stream])
    assert stream.produced == 1 and all(torch.equal(a, kv.k) for a, kv in zip(before, cache.layers))


def test_a_step_refused_by_the_guard_fails_its_stories_and_the_next_ones_are_served(tiny_model, caplog):
    """Catches a refused step that stops the batcher or leaves its rows taken: the broken story ends with a
    message, the error is logged once, and the next story is written in full."""
    batcher = Batcher(Engine(tiny_model), max_batch=4)
    try:
        def broken():
            request = batcher.submit([1, 2], SamplingParams(temperature=0, max_new_tokens=50))
            request.stream.context, request.stream.stale = [1] * (TINY.block_size + 3), False
            return request
        request = batcher.compute.call(broken)
        wait_for(lambda: request.finished)
        with pytest.raises(StoryFailed, match="Generate again"):
            request.take()
        assert caplog.text.count("decode step failed") == 1 and f"row 0 at {TINY.block_size + 2}" in caplog.text
        assert batcher.load() == (0, 0)
        story = list(batcher.generate([1], SamplingParams(temperature=0, max_new_tokens=40, stop_at_eot=False)))
        assert len(story) == 40
    finally:
        batcher.close()


COMPILED_SLIDE = """
import os, sys, time
import torch
from tests.conftest import TINY
from tests.test_batching import ends_as_another_slides, submit_together
from tinygpt import GPT
from tinygpt.inference.engine import Engine
from tinygpt.kernels.quantize import for_serving
from tinygpt.serving.batching import Batcher
torch.manual_seed(0)
engine = Engine(for_serving(GPT(TINY).eval(), "int8"), compile=True, batch_sizes=(1, 2, 4))
if not engine.compiled:
    sys.exit(3)
batcher = Batcher(engine, max_batch=4)
requests = submit_together(batcher, ends_as_another_slides(TINY.block_size))
while not all(r.finished for r in requests):
    time.sleep(0.01)
print([len(r.take()[0]) for r in requests], flush=True)
batcher.close()
# Skip the interpreter's teardown: after the right answer it once aborted in CI ('terminate called without an
# active exception', exit -6; not traced, not this test's question)
os._exit(0)
"""


@pytest.mark.slow
def test_the_compiled_server_survives_a_story_that_leaves_as_another_slides():
    """Issue 32 as the playground met it: the compiled int8 step (our kernels where they build) with 3 streams
    padded to 4. Before the fix the bounds check in Inductor's generated code killed the process ('index out of
    bounds: 0 <= tmp < 32'); in a subprocess, so that the suite survives that too."""
    done = subprocess.run([sys.executable, "-c", COMPILED_SLIDE], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    if done.returncode == 3:
        pytest.skip("torch.compile is not available here")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[-2] == str([TINY.block_size - 9, 100, 100, 100])
