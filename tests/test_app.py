"""The playground against a real Gradio server: gradio_client for the API, and Debian's chromium
driven by Playwright for what a person sees. All slow (servers and browsers)."""
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY
from tinygpt import GPT, save_checkpoint
from tinygpt.inference.engine import Engine
from tinygpt.playground.registry import ModelRegistry
from tinygpt.playground.sessions import keep_sessions_lean
from tinygpt.playground.ui import build_demo
from tinygpt.serving.loading import ServeConfig

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"


@contextlib.contextmanager
def browser_page(width: int, height: int, **options) -> Iterator:
    """A page of Debian's chromium (driven by Playwright) at width x height; the browser closes after."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            yield browser.new_page(viewport={"width": width, "height": height}, **options)
        finally:
            browser.close()


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
def registry(checkpoint):
    """Two generation slots and two places in the queue; the same checkpoint is offered twice for comparison
    (as `--compare` would)."""
    second = checkpoint.parent / "second"
    if not second.exists():
        shutil.copytree(checkpoint, second)
    return ModelRegistry(ServeConfig(checkpoint=str(checkpoint), compile=False, compare=(str(second),),
                                     concurrency=2, max_queue=2))


@pytest.fixture(scope="module")
def server(registry):
    """A launched app whose model is slowed to ~50 ms per decode step, so a long job is long."""
    advance = Engine.advance

    def slow_step(self, *args):
        time.sleep(0.05)
        return advance(self, *args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Engine, "advance", slow_step)
        demo = build_demo(registry)
        port = free_port()
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        keep_sessions_lean(demo)  # as app.py does
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
    assert len(last) == 2  # story and stats; the shaded tokens follow in their own event


def test_same_seed_same_story(client):
    a, _ = run(client, seed=123)
    b, _ = run(client, seed=123)
    c, _ = run(client, seed=124)
    assert a[-1] == b[-1] and a[-1] != c[-1]


def test_odd_prompts_are_handled(client):
    stories, last = run(client, prompt="", max_new=3)  # empty prompt: starts from <|endoftext|>
    assert "Empty prompt" in last[1]
    stories, last = run(client, prompt="word " * 200, max_new=2)
    assert "reads only its last 32" in last[1]
    stories, _ = run(client, prompt="a\x00b\x07c", max_new=2)
    assert stories[-1].startswith("abc")


def wait_for(condition, timeout: float, what: str) -> None:
    end = time.time() + timeout
    while not condition():
        assert time.time() < end, what
        time.sleep(0.02)


def started(job):
    wait_for(lambda: bool(job.outputs()), 30, "the job never started")
    return job


def test_cancelled_job_frees_its_slot(client, registry):
    batcher = registry.served.batcher
    long = started(client.submit("Once", 1.0, 0, 1.0, 512, 1, api_name="/generate"))  # ~25 s at 50 ms/token
    assert batcher.load() == (1, 0)
    long.cancel()
    wait_for(lambda: batcher.load() == (0, 0), 2, "the cancelled story kept its slot")
    stories, _ = run(client, max_new=3)  # serving goes on
    assert stories and len(long.outputs()) < 512


def test_a_client_that_goes_away_frees_its_slot(server, registry):
    """The client process is killed mid-story (a closed tab, a dropped connection): its stream must stop."""
    batcher = registry.served.batcher
    script = ("import sys; from gradio_client import Client\n"
              "job = Client(sys.argv[1], verbose=False).submit('Once', 1.0, 0, 1.0, 512, 1, api_name='/generate')\n"
              "for update in job: print('streaming', flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, server], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("streaming")
        assert batcher.load() == (1, 0)
    finally:
        proc.kill()
    wait_for(lambda: batcher.load() == (0, 0), 5, "the abandoned story kept its slot")


def test_a_full_queue_answers_with_a_clear_message(client, registry):
    jobs = [started(client.submit("Once", 1.0, 0, 1.0, 512, 1, api_name="/generate")) for _ in range(2)]  # decoding
    jobs += [client.submit("Once", 1.0, 0, 1.0, 512, 1, api_name="/generate") for _ in range(2)]  # waiting
    wait_for(lambda: registry.served.batcher.load() == (2, 2), 10, "the two waiting requests never queued")
    try:
        with pytest.raises(Exception, match=r"The playground is busy \(2 stories being written, 2 waiting\)\. "
                                            "Please try again in a minute."):
            client.submit("Once", 1.0, 0, 1.0, 3, 1, api_name="/generate").result(timeout=30)
    finally:
        for job in jobs:
            job.cancel()
    wait_for(lambda: registry.served.batcher.load() == (0, 0), 5, "cancelled requests kept their places")


def start_app(cwd: Path, app: Path = ROOT / "app.py", *args: str, env_extra: dict | None = None):
    """app.py in a fresh process, with no TINYGPT_* variables but `env_extra`; (process, base URL, /config body)."""
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TINYGPT_")}, **(env_extra or {})}
    proc = subprocess.Popen([sys.executable, str(app), "--port", str(port), "--no-compile", *args], cwd=cwd, env=env,
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
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    with browser_page(1280, 1100) as page:
        page.goto(server)
        page.locator("#prompt textarea").fill("Once upon a time, there was a cat")
        page.locator("#max-new input[type=number]").fill("40")
        page.locator("#seed input").fill("11")  # the same story every run
        expect(page.locator("#stop")).to_be_disabled()  # nothing runs yet
        page.locator("#generate").click()
        story = page.locator("#story textarea")
        lengths, stop_enabled = [], False
        for _ in range(100):  # watch it grow while it streams
            lengths.append(len(story.input_value()))
            stop_enabled |= page.locator("#stop").is_enabled()
            if "40 tokens" in page.locator("#stats").inner_text():
                break
            page.wait_for_timeout(100)
        assert len(set(lengths)) > 2 and lengths == sorted(lengths)
        assert stop_enabled, "Stop was never active while the story ran"
        expect(page.locator("#stop")).to_be_disabled(timeout=15_000)  # ... and not after
        assert story.input_value().startswith("Once upon a time, there was a cat")
        token = page.locator("#thinking .token").nth(3)
        token.click()
        panel = page.locator("#alternatives")
        expect(panel).to_contain_text("Token 4:", timeout=15_000)
        expect(panel).to_contain_text("picked with probability")
        assert "→" in panel.inner_text()  # the picked token is marked in the table
        # the view inside the model: attention over the tokens read, and the lens, for the last layer first
        expect(page.locator("#inside-lens")).to_be_visible(timeout=15_000)
        expect(page.locator("#inside-top")).to_contain_text("layer 2, average of the heads")
        expect(page.locator("#inside-lens")).to_contain_text("after block 2")
        assert "embedding" in page.locator("#inside-lens").inner_text()
        shading = page.locator("#inside-attention .token")
        assert shading.count() >= 4  # the prompt's tokens and the three before the clicked one
        before = page.locator("#inside-top").inner_text()
        page.locator("#inside-layer input").click()
        page.get_by_role("option", name="layer 1").click()
        expect(page.locator("#inside-top")).to_contain_text("layer 1, average of the heads", timeout=15_000)
        assert page.locator("#inside-top").inner_text() != before
        page.screenshot(path=str(ARTIFACTS / "playground.png"), full_page=True)
    assert (ARTIFACTS / "playground.png").stat().st_size > 10_000


DUPLICATE_IDS = """() => {
    const seen = {};
    for (const el of document.querySelectorAll('[id]')) if (el.id) seen[el.id] = (seen[el.id] || 0) + 1;
    return Object.entries(seen).filter(([, n]) => n > 1).map(([id, n]) => `${id} x${n}`);
}"""


@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_browser_every_element_id_is_used_once(server):
    """Catches two elements with one id (the page had two with id="inside"): a test, a style or a script that
    finds an element by its id may find the other one. Checked on the page as it opens and once a story's
    token is clicked (the view inside the model shown)."""
    from playwright.sync_api import expect

    with browser_page(1280, 1100) as page:
        page.goto(server)
        expect(page.locator("#generate")).to_be_enabled(timeout=30_000)
        assert page.evaluate(DUPLICATE_IDS) == []
        page.locator("#max-new input[type=number]").fill("6")
        page.locator("#seed input").fill("11")  # a story that runs its 6 tokens
        expect(page.locator("#max-new input[type=number]")).to_have_value("6")
        page.locator("#generate").click()
        # wait for the story's end itself: Stop is also disabled before the click takes effect
        expect(page.locator("#stats")).to_contain_text("6 tokens", timeout=60_000)
        expect(page.locator("#stop")).to_be_disabled(timeout=30_000)
        page.locator("#thinking .token").nth(2).click()
        expect(page.locator("#inside-lens")).to_be_visible(timeout=15_000)
        assert page.evaluate(DUPLICATE_IDS) == []


def test_inspect_api_gives_the_pages_numbers_and_clear_errors(client, registry):
    """Catches the API and the page inspecting different things (another window, model or position): the
    page's handler and the API must give the same JSON for the same story token."""
    from tinygpt.inference.sampling import SamplingParams
    from tinygpt.inference.story import stream_story
    from tinygpt.playground import inside

    loaded = registry.served
    snap = list(stream_story(loaded.engine, loaded.tokenizer, "Once upon a time",
                             SamplingParams(temperature=0, max_new_tokens=50, stop_at_eot=False)))[-1]
    snap = __import__("dataclasses").replace(snap, source=registry.labels()[0])
    ids, n = [*snap.prompt_ids, *snap.ids], len(snap.prompt_ids)
    for piece in (0, 20, 49):  # 49: past the tiny model's 32-token context, in a slid window
        _, page = inside.inspect_snapshot(registry, snap, piece)
        api = client.predict(ids, n + piece, n, "", api_name="/inspect")
        assert api == {**page.to_json(), "window_text": api["window_text"], "token_text": api["token_text"]}
        assert len(api["attention"]) == TINY.n_layer and len(api["attention"][0]) == TINY.n_head
    for story, position, message in [(ids, len(ids), "position must be an integer"),
                                     (list(range(5000)), 3, "at most 4096 can be inspected"),
                                     ("", 0, "the story is empty")]:
        with pytest.raises(Exception, match=message):
            client.predict(story, position, -1, "", api_name="/inspect")
    with pytest.raises(Exception, match="model must be one of"):
        client.predict(ids, 3, -1, "nope", api_name="/inspect")


SHIPPED = ROOT / "tinygpt" / "assets" / "story-model"


@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian's chromium is not installed (.ci/run installs it)")
@pytest.mark.skipif(not (SHIPPED / "config.json").exists(), reason="no shipped model in this checkout")
def test_fresh_clone_serves_the_shipped_model_and_writes_a_story(tmp_path):
    """No out/, no variables: the page serves the model in tinygpt/assets/story-model, says what it is and how
    it was trained, and writes a story. Greedy decoding must give TinyStories' opening, which a wrongly loaded
    (say, badly dequantized) model would not."""

    proc, url, body = start_app(tmp_path)
    try:
        assert "ships with TinyGPT" in body and "how it was trained" in body and "Train a better one" in body
        with browser_page(1280, 1400) as page:
            page.goto(url)
            page.locator("#prompt textarea").fill("Once upon a time")
            page.locator("#max-new input[type=number]").fill("60")
            page.locator("#temperature input[type=number]").fill("0")
            page.locator("#generate").click()
            for _ in range(300):
                if any(s in page.locator("#stats").inner_text() for s in ("60 tokens", "ended the story")):
                    break
                page.wait_for_timeout(100)
            story = page.locator("#story textarea").input_value()
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "shipped-model.png"), full_page=True)
    finally:
        out = stop_app(proc)
    assert story.startswith("Once upon a time, there was a"), story
    assert len(story.split()) > 40 and story.count(".") >= 3, story
    assert "Traceback" not in out


def in_view(page, selector: str) -> dict:
    """The element's box and how many of its pixels rows lie inside the viewport."""
    box = page.locator(selector).bounding_box()
    height = page.viewport_size["height"]
    return {**box, "visible": max(0.0, min(box["y"] + box["height"], height) - max(box["y"], 0.0))}


@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_browser_compare_streams_two_stories_side_by_side(server):
    """Catches the stories not streaming together, and the sides stacking on a desktop (Model B's story ~850 px
    below A's, the button off screen)."""
    from playwright.sync_api import expect

    with browser_page(1400, 1000) as page:
        page.goto(server)
        page.get_by_role("tab", name="Compare").click()
        page.locator("#compare-max-new input[type=number]").fill("30")
        page.locator("#generate-compare").click()
        a, b = page.locator("#story-a textarea"), page.locator("#story-b textarea")
        seen_both_growing = False
        for _ in range(150):
            la, lb = len(a.input_value()), len(b.input_value())
            both_done = all("30 tokens" in page.locator(f"#stats-{s}").inner_text() for s in "ab")
            seen_both_growing |= 0 < la and 0 < lb and not both_done
            if both_done:
                break
            page.wait_for_timeout(100)
        assert seen_both_growing, "the two stories did not stream side by side"
        expect(page.locator("#stats-a")).to_contain_text("30 tokens")
        expect(page.locator("#stats-b")).to_contain_text("30 tokens")
        assert a.input_value() != b.input_value()  # temperatures 0.8 and 1.2 from one seed
        a, b, button = (in_view(page, s) for s in ("#story-a", "#story-b", "#generate-compare"))
        for box in (a, b, button):  # all in view at once ...
            assert box["visible"] == box["height"] and box["x"] + box["width"] <= 1400, box
        assert b["x"] >= a["x"] + a["width"] - 1, (a, b)  # ... next to each other ...
        assert a["y"] < b["y"] + b["height"] and b["y"] < a["y"] + a["height"], (a, b)  # ... at the same height
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "compare-wide.png"))


@pytest.mark.skipif(not shutil.which("chromium"), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_browser_story_comes_into_view_on_a_phone(server):
    """Catches a phone visitor pressing Generate and seeing the sliders while the story streams off screen."""
    from playwright.sync_api import expect

    with browser_page(390, 844, is_mobile=True, has_touch=True) as page:
        page.goto(server)
        page.locator("#max-new input[type=number]").fill("200")
        assert in_view(page, "#story")["y"] > 600  # below the settings until Generate is pressed
        page.locator("#generate").tap()
        page.wait_for_timeout(1000)
        story = page.locator("#story textarea")
        assert in_view(page, "#story")["visible"] >= 240, in_view(page, "#story")
        expect(story).not_to_have_value("", timeout=15_000)  # the first tokens (a busy CI machine: over a second)
        first = len(story.input_value())
        page.wait_for_timeout(1000)
        assert len(story.input_value()) > first > 0  # and it grows there
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "phone.png"))
        page.locator("#stop").tap()
        page.locator("#thinking .token").nth(2).tap()  # the view inside the model comes into view too
        page.locator("#inside-lens").wait_for(state="visible", timeout=15_000)
        page.wait_for_timeout(500)
        assert in_view(page, "#inside-top")["visible"] > 0 and in_view(page, "#inside-top")["y"] >= 0, \
            in_view(page, "#inside-top")
        page.get_by_role("tab", name="Compare").tap()  # the sides stack, each story under its own settings
        ys = [page.locator(s).bounding_box()["y"] for s in ("#model-a", "#story-a", "#model-b", "#story-b")]
        assert ys == sorted(ys), ys


def test_compare_api_gives_two_stories_for_one_seed(client, checkpoint):
    second = str(checkpoint.parent / "second")  # a model's label is the path or repo id the operator gave
    job = client.submit("Once upon a time", 7, 12, second, 0.0, 50, 1.0, second, 0.0, 50, 1.0, api_name="/compare")
    final = job.result(timeout=120)
    story_a, story_b = final[0], final[2]  # (story, stats) per side; the snapshot stays on the server
    assert story_a == story_b and story_a.startswith("Once upon a time")  # same model, greedy: same story
    with pytest.raises(Exception, match="model must be one of"):
        client.submit("Hi", 7, 3, "/etc/passwd", 0.8, 50, 1.0, second, 0.8, 50, 1.0, api_name="/compare").result(
            timeout=60)



def test_min_p_and_penalty_reach_the_sampler_through_both_apis(client, checkpoint):
    """Catches the two settings added last being dropped, swapped or checked by no one on their way from the
    API to SamplingParams (older calls, without them, keep the defaults: the tests above)."""
    greedy = ("Once upon a time", 0.0, 50, 1.0, 40, 1)
    plain = client.predict(*greedy, api_name="/generate")[0]
    assert client.predict(*greedy, 0.0, 1.0, api_name="/generate")[0] == plain  # min-p leaves greedy as it is
    assert client.predict(*greedy, 0.0, 2.0, api_name="/generate")[0] != plain  # the penalty changes the story
    with pytest.raises(Exception, match=re.escape("min_p must be a number in [0.0, 0.5]")):
        client.predict(*greedy, 0.9, 1.0, api_name="/generate")
    with pytest.raises(Exception, match=re.escape("repetition_penalty must be a number in [1.0, 2.0]")):
        client.predict(*greedy, 0.0, 0.5, api_name="/generate")
    second = str(checkpoint.parent / "second")
    sides = ("Once upon a time", 7, 40, second, 0.0, 50, 1.0, second, 0.0, 50, 1.0)
    final = client.predict(*sides, 0.0, 1.0, 0.0, 2.0, api_name="/compare")  # min-p, penalty: A, then B
    assert final[0] != final[2] and final[0] == client.predict(*sides, api_name="/compare")[0]

# NaN: gradio_client refuses to send it (not valid JSON) at once; other clients' NaN reaches SamplingParams.
BAD_VALUES = [("temperature", "hot", "temperature must be a number"),
              ("temperature", float("nan"), "Out of range float values are not JSON compliant"),
              ("temperature", 9.0, "temperature must be a number in [0.0, 2.0]"), ("top_k", None, "top_k must be"),
              ("top_p", 0.0, "top_p must be a number in [0.05, 1.0]"), ("max_new", 100000, "max_new_tokens must be"),
              ("seed", -5, "seed must be -1 (random) or an integer >= 0"), ("seed", "x", "seed must be")]


def test_bad_api_values_get_one_clear_message_and_no_server_traceback(tmp_path, checkpoint):
    """Every bad value (wrong type, NaN, out of range, missing) gets its own message; the console stays clean."""
    from gradio_client import Client

    proc, url, _ = start_app(tmp_path, ROOT / "app.py", "--checkpoint", str(checkpoint))
    try:
        client = Client(url, verbose=False)
        for name, value, message in BAD_VALUES:
            kw = dict(prompt="Hi", temperature=0.8, top_k=50, top_p=0.95, max_new=3, seed=1)
            kw[name] = value
            start = time.time()
            with pytest.raises(Exception, match=re.escape(message)):
                client.submit(*kw.values(), api_name="/generate").result(timeout=20)
            assert time.time() - start < 10, (name, value)
        assert client.predict("Hi", 0.0, 50, 0.95, 3, 1, api_name="/generate")[0].startswith("Hi")
        for story, position, message in [("Once upon a time", 99, "position must be an integer from 1 to 3"),
                                         ([1, 2, 3], -1, "position must be an integer"),
                                         ([1] * 5000, 1, "at most 4096 can be inspected")]:
            with pytest.raises(Exception, match=message):
                client.predict(story, position, -1, "", api_name="/inspect")
    finally:
        out = stop_app(proc)
    assert "Traceback" not in out, out[-3000:]
    assert "TinyGPT playground: http://localhost:" in out and "share=True" not in out  # start-up says what helps


def broken(kind: str, checkpoint: Path, where: Path) -> Path:
    shutil.copytree(checkpoint, where)
    if kind == "truncated":
        data = (where / "model.safetensors").read_bytes()
        (where / "model.safetensors").write_bytes(data[:len(data) // 2])
    else:
        (where / "config.json").write_text("{not json")
    return where


@pytest.mark.parametrize("kind, reason", [("truncated", "truncated or corrupt"), ("config", "not valid JSON")])
def test_explicit_bad_checkpoint_exits_2_with_the_reason(tmp_path, checkpoint, kind, reason):
    bad = broken(kind, checkpoint, tmp_path / "bad")
    proc = subprocess.run([sys.executable, str(ROOT / "app.py"), "--checkpoint", str(bad), "--no-compile"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and reason in proc.stderr and str(bad) in proc.stderr, proc.stderr[-2000:]
    proc = subprocess.run([sys.executable, str(ROOT / "app.py"), "--checkpoint", str(tmp_path / "nowhere")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and "no such checkpoint directory" in proc.stderr


@pytest.mark.parametrize("kind, reason", [("truncated", "truncated or corrupt"), ("config", "not valid JSON")])
def test_a_broken_default_model_is_explained_on_the_page(tmp_path, checkpoint, kind, reason):
    """out/best is broken: the page names the file and what is wrong (and still serves the shipped model)."""
    broken(kind, checkpoint, tmp_path / "out" / "best")
    proc, _, body = start_app(tmp_path)
    try:
        assert "could not be loaded" in body and reason in body and "out/best" in body
    finally:
        stop_app(proc)


def test_the_app_keeps_gradios_monitoring_summary_off_the_models_cpu(checkpoint, monkeypatch):
    """Catches Gradio rebuilding its monitoring summary (a pandas DataFrame of every past event, 4-10 ms) after
    each story, or the setting arriving after Gradio built its queue (where it is read)."""
    import app

    monkeypatch.setenv("GRADIO_ANALYTICS_CACHE_FREQUENCY", "")  # so that teardown removes what the app sets
    monkeypatch.delenv("GRADIO_ANALYTICS_CACHE_FREQUENCY")
    demo, _ = app.load_demo(ServeConfig(checkpoint=str(checkpoint), compile=False))
    assert demo._queue.ANAYLTICS_CACHE_FREQUENCY == 100
    monkeypatch.setenv("GRADIO_ANALYTICS_CACHE_FREQUENCY", "7")  # the operator's choice wins
    assert app.load_demo(ServeConfig(checkpoint=str(checkpoint), compile=False))[0]._queue.ANAYLTICS_CACHE_FREQUENCY == 7
