"""The playground against a real Gradio server: gradio_client for the API, and Debian's chromium
driven by Playwright for what a person sees."""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY
from tinygpt import GPT, save_checkpoint
from tinygpt.playground.ui import build_demo
from tinygpt.inference.engine import Engine
from tinygpt.playground.serving import load_for_serving

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(GPT(TINY), tmp_path_factory.mktemp("ckpt") / "best", step=10, tokens_seen=12345,
                           val_loss=4.2)


@pytest.fixture(scope="module")
def server(checkpoint):
    """A launched app with one generation slot and a model slowed to ~50 ms/token, so a long job is long."""
    loaded = load_for_serving(str(checkpoint), torch.device("cpu"))
    uniform = Engine._uniform  # drawn once per token

    def slow_token(self, *args):
        time.sleep(0.05)
        return uniform(self, *args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Engine, "_uniform", slow_token)
        demo = build_demo(loaded, concurrency=1, max_queue=8)
        port = free_port()
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        yield f"http://127.0.0.1:{port}/"
        demo.close()


@pytest.fixture
def client(server):
    from gradio_client import Client

    return Client(server, verbose=False)


def run(client, prompt="Once upon a time", temperature=0.9, top_k=50, top_p=0.95, max_new=12, seed=7):
    job = client.submit(prompt, temperature, top_k, top_p, max_new, seed, api_name="/generate")
    job.result(timeout=120)
    return [o[0] for o in job.outputs()], job.outputs()[-1]


def test_story_streams_grows_and_respects_max_tokens(client):
    stories, last = run(client, max_new=12)
    assert len(stories) > 1
    assert all(b.startswith(a) for a, b in zip(stories, stories[1:]))  # grows monotonically
    assert stories[0].startswith("Once upon a time")
    assert len(stories) <= 12 and "**" in last[1] and "tokens/s" in last[1]
    assert len(last[2]) <= 12  # one shaded piece per generated token


def test_same_seed_same_story(client):
    a, _ = run(client, seed=123)
    b, _ = run(client, seed=123)
    c, _ = run(client, seed=124)
    assert a[-1] == b[-1] and a[-1] != c[-1]


def test_bad_input_gets_a_message_not_a_traceback(client):
    with pytest.raises(Exception, match="less than minimum value 0.05"):  # Gradio checks slider bounds
        run(client, top_p=0.0)
    with pytest.raises(Exception, match="greater than maximum value 1024"):
        run(client, max_new=100000)
    stories, last = run(client, prompt="", max_new=3)  # empty prompt: starts from <|endoftext|>
    assert "Empty prompt" in last[1]
    stories, last = run(client, prompt="word " * 200, max_new=2)
    assert "reads only its last 32" in last[1]
    stories, _ = run(client, prompt="a\x00b\x07c", max_new=2)
    assert stories[-1].startswith("abc")


def test_cancelled_job_frees_the_queue(client):
    long = client.submit("Once", 1.0, 0, 1.0, 512, 1, api_name="/generate")  # ~25 s at 50 ms/token
    deadline = time.time() + 30
    while not long.outputs() and time.time() < deadline:
        time.sleep(0.05)
    assert long.outputs(), "the long job never started"
    long.cancel()
    start = time.time()
    stories, _ = run(client, max_new=3)  # the only slot must be free again
    assert time.time() - start < 10 and stories
    assert len(long.outputs()) < 512


def start_app(cwd: Path, app: Path = ROOT / "app.py", *args: str):
    """app.py in a fresh process, with no TINYGPT_* variables; returns (process, base URL, /config body)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINYGPT_")}
    proc = subprocess.Popen([sys.executable, str(app), "--port", str(port), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for _ in range(240):
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=2).read().decode()
            return proc, f"http://127.0.0.1:{port}/", body
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise AssertionError("app.py did not start: " + proc.communicate()[0][-3000:])


def stop_app(proc) -> str:
    proc.terminate()
    return proc.communicate(timeout=30)[0]


def test_app_starts_without_a_model_and_says_how_to_get_one(tmp_path):
    """A copy of the app without the shipped model (as if it were deleted): the page explains what to do."""
    shutil.copy(ROOT / "app.py", tmp_path)
    shutil.copytree(ROOT / "tinygpt", tmp_path / "tinygpt", ignore=shutil.ignore_patterns("story-model", "__pycache__"))
    proc, _, body = start_app(tmp_path, tmp_path / "app.py")
    try:
        assert "No model is loaded yet" in body and "python train.py --preset cpu --time-budget 60m" in body
    finally:
        out = stop_app(proc)
    assert "Traceback" not in out


@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_browser_generate_and_inspect_a_token(server):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.goto(server)
        page.locator("#prompt textarea").fill("Once upon a time, there was a cat")
        page.locator("#max-new input[type=number]").fill("40")
        page.locator("#generate").click()
        story = page.locator("#story textarea")
        lengths = []
        for _ in range(100):  # watch it grow while it streams
            lengths.append(len(story.input_value()))
            if "40** tokens" in page.locator("#stats").inner_text():
                break
            page.wait_for_timeout(100)
        assert len(set(lengths)) > 2 and lengths == sorted(lengths)
        assert story.input_value().startswith("Once upon a time, there was a cat")
        page.locator("#thinking .token").nth(3).click()
        expect(page.locator("#alternatives")).to_contain_text("%")
        page.screenshot(path=str(ARTIFACTS / "playground.png"), full_page=True)
        browser.close()
    assert (ARTIFACTS / "playground.png").stat().st_size > 10_000


SHIPPED = ROOT / "tinygpt" / "assets" / "story-model"


@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian's chromium is not installed (.ci/run installs it)")
@pytest.mark.skipif(not (SHIPPED / "config.json").exists(), reason="no shipped model in this checkout")
def test_fresh_clone_serves_the_shipped_model_and_writes_a_story(tmp_path):
    """No out/, no variables: the page serves the model in tinygpt/assets/story-model, says what it is and how
    it was trained, and writes a story. Greedy decoding must give TinyStories' opening, which a wrongly loaded
    (say, badly dequantized) model would not."""
    from playwright.sync_api import sync_playwright

    proc, url, body = start_app(tmp_path)
    try:
        assert "ships with TinyGPT" in body and "how it was trained" in body and "Train a better one" in body
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.goto(url)
            page.locator("#prompt textarea").fill("Once upon a time")
            page.locator("#max-new input[type=number]").fill("60")
            page.locator("#temperature input[type=number]").fill("0")
            page.locator("#generate").click()
            for _ in range(300):
                if any(s in page.locator("#stats").inner_text() for s in ("60** tokens", "ended the story")):
                    break
                page.wait_for_timeout(100)
            story = page.locator("#story textarea").input_value()
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "shipped-model.png"), full_page=True)
            browser.close()
    finally:
        out = stop_app(proc)
    assert story.startswith("Once upon a time, there was a"), story
    assert len(story.split()) > 40 and story.count(".") >= 3, story
    assert "Traceback" not in out
