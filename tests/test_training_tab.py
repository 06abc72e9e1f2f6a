"""The Training tab against a real app and a real training run: a tiny run writes into the served out/ while
Debian's chromium (Playwright) watches the tab, and gradio_client calls its API. Slow (servers, a browser, a run)."""
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY
from tests.test_app import ARTIFACTS, browser_page, start_app, stop_app
from tinygpt import GPT, save_checkpoint

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
needs_chromium = pytest.mark.skipif(not shutil.which("chromium"), reason="Debian's chromium is not installed")


def train(data: Path, out: Path, *flags: str) -> subprocess.Popen:
    """The tiny preset, as a user starts it in another terminal."""
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), "--preset", "tiny", "--device", "cpu",
                             "--data-dir", str(data), "--out-dir", str(out), "--max-iters", "150",
                             "--eval-interval", "50", "--snapshots", "3", *flags],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


POINTS = """() => new Set([...document.querySelectorAll('#run-curve [aria-label]')].map(e => e.ariaLabel)
    .filter(label => /^step: \\d+; loss: [0-9.]+; split: (train|val)/.test(label))).size"""


def api_gives_the_run_and_each_snapshots_story(url: str, out: Path, best: int) -> None:
    """The same through the API (one app and one run for both, for CI's time)."""
    from gradio_client import Client

    (out / "metrics.jsonl").open("a").write('{"step": 999, "train_lo')  # a line being written: left for later
    client = Client(url, verbose=False)
    record = client.predict(api_name="/training_run")
    assert record["state"] == "ended" and [r["step"] for r in record["records"]] == [50, 100, 150]
    assert record["snapshots"] == [10, 39, 150] and record["serving_step"] == best
    stories = {client.predict(step, "Once upon a time", 3, 30, api_name="/snapshot_story")
               for step in record["snapshots"]}
    assert len(stories) == 3
    again = client.predict(record["snapshots"][0], "Once upon a time", 3, 30, api_name="/snapshot_story")
    assert again in stories  # the same prompt and seed: the same story
    with pytest.raises(Exception, match="no snapshot at step 11"):
        client.predict(11, "Once", 1, 10, api_name="/snapshot_story")


@needs_chromium
def test_the_tab_follows_a_run_live_and_the_new_best_is_served_without_a_reload(tmp_path, token_data):
    """Catches a tab that needs a reload to see a run (or stops polling), a new best that is not served until a
    restart, snapshots that write the same story, and a traceback where a folder has no run yet, a line is half
    written, or the folder was deleted; then the API's answers for the same run."""
    from playwright.sync_api import expect

    torch.manual_seed(0)
    save_checkpoint(GPT(TINY), tmp_path / "out" / "best", step=0)  # served from the start, then trained over
    proc, url, _ = start_app(tmp_path)
    trainer = None
    try:
        with browser_page(1280, 1000) as page:
            page.goto(url)
            page.get_by_role("tab", name="Training").click()
            status = page.locator("#run-status")
            expect(status).to_contain_text("No training run has written", timeout=30_000)
            expect(status).to_contain_text("serves step 0", timeout=5_000)
            trainer = train(token_data, tmp_path / "out")
            expect(status).to_contain_text("Training", timeout=60_000)  # within a few polls of its first steps
            page.wait_for_function(f"({POINTS})() >= 2", timeout=120_000)  # the first evaluation, drawn
            first = page.evaluate(POINTS)
            expect(status).to_contain_text("ended at step 150", timeout=180_000)
            page.wait_for_function(f"({POINTS})() == 6", timeout=30_000)  # train and val at 50, 100 and 150
            assert first < 6, "the curve was complete before the run ended: no live update was seen"
            assert trainer.wait(timeout=60) == 0, trainer.stdout.read()[-3000:]
            best = json.loads((tmp_path / "out" / "best" / "config.json").read_text())["metadata"]["step"]
            expect(status).to_contain_text(f"serves step {best}", timeout=30_000)  # no reload: same page
            expect(page.locator("#run-samples")).to_contain_text("Step 150")
            samples = page.locator("#run-samples .run-sample")
            assert samples.count() == 3 and "Step 150" in samples.first.inner_text()  # newest first
            page.locator("#snapshot-write").click()
            stories = page.locator("#snapshot-stories .snapshot-story")
            expect(stories).to_have_count(3, timeout=60_000)
            texts = [stories.nth(i).locator("p").inner_text() for i in range(3)]
            assert len(set(texts)) == 3 and all(t.startswith("Once upon a time") for t in texts)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "training-tab.png"), full_page=True)
            api_gives_the_run_and_each_snapshots_story(url, tmp_path / "out", best)
            shutil.rmtree(tmp_path / "out")  # deleted while the tab is open
            expect(status).to_contain_text("There is no run folder", timeout=30_000)
    finally:
        if trainer and trainer.poll() is None:
            trainer.kill()
        out = stop_app(proc)
    assert "Traceback" not in out, out[-3000:]
    assert "now serving step" in out
