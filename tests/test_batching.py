"""Continuous batching on a tiny model: streams that share decode steps get the stories they would get alone,
leave and join between steps, and a full waiting line refuses with a message."""
import asyncio
import threading
import time

import pytest
import torch

from tests.conftest import TINY
from tinygpt.inference.batching import Batcher, QueueFull
from tinygpt.inference.engine import Engine
from tinygpt.inference.sampling import SamplingParams


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


def test_a_failed_step_ends_its_streams_with_the_error_and_serving_goes_on(batcher, monkeypatch):
    advance = Engine.advance
    monkeypatch.setattr(Engine, "advance", lambda self, *a: (_ for _ in ()).throw(RuntimeError("out of memory")))
    with pytest.raises(RuntimeError, match="out of memory"):
        list(batcher.generate([1], SamplingParams(max_new_tokens=3)))
    monkeypatch.setattr(Engine, "advance", advance)
    assert len(list(batcher.generate([1], SamplingParams(max_new_tokens=3, stop_at_eot=False)))) == 3
