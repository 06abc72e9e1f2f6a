"""A served checkpoint folder written anew (train.py's out/best) is served anew between stories
(tinygpt.serving.reload), without a restart and without cutting a story."""
import logging
import threading
import time

import pytest
import torch

from tests.conftest import TINY
from tinygpt import GPT, save_checkpoint
from tinygpt.inference.engine import Engine
from tinygpt.inference.sampling import SamplingParams
from tinygpt.serving.batching import Batcher
from tinygpt.serving.loading import load_for_serving
from tinygpt.serving.reload import Reloader

GREEDY = SamplingParams(temperature=0, max_new_tokens=24, stop_at_eot=False)
LONG = SamplingParams(temperature=0, max_new_tokens=1024, stop_at_eot=False)  # slides ~30 times


def model(seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(TINY).eval()


# Made before any server thread runs: building a model draws from torch's global generator, and so does a reload
# building the new one on the compute thread, so a model made meanwhile would come out different.
FIRST, SECOND = model(0), model(1)


def story(source, params=GREEDY) -> list[int]:
    return [t.id for t in source.generate([464, 1310], params)]


def wait_until(condition, timeout=30.0):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


@pytest.fixture
def served(tmp_path):
    directory = save_checkpoint(FIRST, tmp_path / "best", step=100)
    batcher = Batcher(Engine(FIRST), max_batch=4)
    reloader = Reloader(batcher, batcher.compute, directory, "fp32", {"metadata": {"step": 100}}, interval=0.05)
    yield directory, batcher, reloader
    reloader.close()
    batcher.close()


def test_a_new_best_is_served_once_the_story_in_flight_has_ended(served, monkeypatch):
    """Catches new weights swapped in mid-story (the story would change from that token on), and a new best that
    is never taken up without a restart."""
    directory, batcher, reloader = served
    advance = Engine.advance

    def slow_step(self, *args):  # 2 ms a step: the story is still being written when the new best lands
        time.sleep(0.002)
        return advance(self, *args)
    old_long, new_short = story(Engine(FIRST), LONG), story(Engine(SECOND))
    tokens, started = [], threading.Event()

    def write_long_story():
        for t in batcher.generate([464, 1310], LONG):
            tokens.append(t.id)
            started.set()

    monkeypatch.setattr(Engine, "advance", slow_step)
    writer = threading.Thread(target=write_long_story)
    writer.start()
    started.wait(10)
    save_checkpoint(SECOND, directory, step=200)  # a new best while the story is being written
    time.sleep(0.5)  # several watches of the folder while the story goes on
    assert writer.is_alive() and reloader.step == 100
    writer.join(60)
    assert tokens == old_long  # the whole story by the weights it started with
    wait_until(lambda: reloader.step == 200)
    assert story(batcher) == new_short


def test_a_broken_checkpoint_keeps_the_served_one_and_the_next_good_one_is_taken(served, caplog):
    directory, batcher, reloader = served
    before, new = story(batcher), story(Engine(SECOND))
    with caplog.at_level(logging.WARNING):
        (directory / "model.safetensors").write_bytes(b"not safetensors")
        (directory / "config.json").touch()
        wait_until(lambda: "could not take up the new checkpoint" in caplog.text)
    assert story(batcher) == before and reloader.step == 100
    save_checkpoint(SECOND, directory, step=300)
    wait_until(lambda: reloader.step == 300)
    assert story(batcher) == new
    save_checkpoint(FIRST, directory, step=400)  # and the next, and the next: each is taken up
    wait_until(lambda: reloader.step == 400)
    assert story(batcher) == before


def test_only_a_local_trained_folder_is_followed(tmp_path):
    """The shipped model and models loaded without `follow` (compared ones) are not watched."""
    from tinygpt.model.checkpoint import SHIPPED_MODEL

    directory = save_checkpoint(FIRST, tmp_path / "best", step=1)
    followed = load_for_serving(str(directory), precision="fp32", follow=True)
    shipped = load_for_serving(str(SHIPPED_MODEL), precision="fp32", follow=True)
    compared = load_for_serving(str(directory), precision="fp32")
    assert followed.reloader is not None and shipped.reloader is None and compared.reloader is None
    save_checkpoint(SECOND, directory, step=2)
    wait_until(lambda: followed.info["metadata"]["step"] == 2)  # what the page's model card reads
    assert followed.reloader.step == 2
