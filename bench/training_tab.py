"""What an open Training tab costs the stories being written at the same time.

    python bench/training_tab.py [--checkpoint tinygpt/assets/story-model] [--users 4] [--tabs 8] [--seconds 30]

Copies the checkpoint into a run folder with a run's records (--records evaluations with their sample stories,
as a 60-minute `--preset cpu` run writes) and a progress.json that this bench rewrites every 2 s, as a live run
does. Starts `app.py` serving it (the fast path), then alternates rounds of --seconds: N visitors writing
200-token stories back to back with the Training tab closed, then the same with --tabs pages that have it open
(each asks for news every 3 s, as the page does; a real run's news, so every answer carries the curve and the
samples). Prints tokens/s for each round and the ratio open / closed from the same run.
"""
import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.visitor import Page, free_port, open_page, start_app, write_story  # noqa: E402
from tinygpt.evaluation.history import write_progress  # noqa: E402
from tinygpt.model.checkpoint import SHIPPED_MODEL  # noqa: E402
from tinygpt.playground.training_tab import POLL_S  # noqa: E402

SAMPLE = ("Once upon a time, there was a little girl named Lily. She loved to play with her red ball in the park. "
          "One day, she saw a big dog. The dog was sad because he was lost. Lily helped him find his home.")


def make_run(checkpoint: Path, folder: Path, records: int) -> Path:
    """folder/best (the checkpoint) beside a metrics.jsonl of `records` evaluations, 250 steps apart."""
    shutil.copytree(checkpoint, folder / "best")
    t0 = time.time() - 3600
    lines = [json.dumps({"step": 250 * (i + 1), "tokens_seen": 2_048_000 * (i + 1), "train_loss": 4 - i / records,
                         "val_loss": 4.1 - i / records, "time": t0 + 60 * i, "sample": SAMPLE,
                         "sample_quality": {"repeated 4-grams": 0.0, "distinct-2": 0.9, "ended": 1.0},
                         "story_loss": {"all": 2.2, "before 128": 2.1, "after 128": 2.4, "tokens": 9000,
                                        "tokens after 128": 3000}}) for i in range(records)]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "best"


def live_progress(folder: Path, stop: threading.Event) -> None:
    step = 0
    while not stop.wait(2.0):
        step += 2
        write_progress(folder, state="running", step=step, max_iters=4000, loss=2.3, tokens_per_sec=2500.0,
                       seconds_left=600.0, tokens_seen=step * 8192)


def tick_of(url: str) -> int:
    """The Training tab's timer event, from the page's config."""
    config = json.loads(urllib.request.urlopen(url + "config", timeout=30).read())
    ids = {c["id"]: c for c in config["components"]}
    status = next(i for i, c in ids.items() if c.get("props", {}).get("elem_id") == "run-status")
    return next(d["id"] for d in config["dependencies"]
                if any(t[1] == "tick" for t in d["targets"]) and status in d["outputs"])


async def tab(http, url: str, tick: int, end: float) -> int:
    """One open Training tab: the page's poll every POLL_S seconds; how many answers carried news."""
    session, news = uuid.uuid4().hex, 0
    while time.monotonic() < end:
        r = await http.post(url + "gradio_api/run/predict", json={
            "data": [None], "fn_index": tick, "session_hash": session, "event_data": None, "trigger_id": None})
        r.raise_for_status()
        news += any(d is not None and d != {"__type__": "update"} for d in r.json().get("data", []))
        await asyncio.sleep(POLL_S)
    return news


async def one_round(page: Page, tick: int, users: int, tabs: int, seconds: float, max_new: int) -> tuple:
    import httpx

    end = time.monotonic() + seconds
    tokens, failed = [0], [0]

    async def visitor(i: int) -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(600.0)) as http:
            session, seed = await open_page(http, page), i * 1000
            while time.monotonic() < end:
                seed += 1
                result = await write_story(http, page, session, seed, max_new)
                tokens[0] += result.get("tokens", 0)
                failed[0] += not result["ok"]

    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0)) as http:
        jobs = [visitor(i) for i in range(users)] + [tab(http, page.url, tick, end) for _ in range(tabs)]
        results = await asyncio.gather(*jobs)
    return tokens[0] / seconds, failed[0], sum(results[users:])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=SHIPPED_MODEL)
    p.add_argument("--users", type=int, default=4)
    p.add_argument("--tabs", type=int, default=8, help="pages with the Training tab open in the 'open' rounds")
    p.add_argument("--seconds", type=float, default=30.0, help="length of each round")
    p.add_argument("--rounds", type=int, default=2, help="closed/open pairs, alternated")
    p.add_argument("--records", type=int, default=17, help="evaluations in the run's metrics.jsonl")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--no-compile", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="tinygpt-tab-") as tmp:
        folder, stop = Path(tmp) / "out", threading.Event()
        best = make_run(args.checkpoint, folder, args.records)
        threading.Thread(target=live_progress, args=(folder, stop), daemon=True).start()
        port = free_port()
        app = start_app(str(best), port, fast_path=not args.no_compile)
        try:
            page = Page(f"http://127.0.0.1:{port}/")
            tick, rates, failed = tick_of(page.url), {"closed": [], "open": []}, 0
            for r in range(args.rounds):
                for name, tabs in (("closed", 0), ("open", args.tabs)):
                    rate, bad, news = asyncio.run(one_round(page, tick, args.users, tabs, args.seconds,
                                                            args.max_new_tokens))
                    rates[name].append(rate)
                    failed += bad
                    print(f"round {r + 1}, tab {name:6s} ({tabs} pages): {rate:7.0f} tok/s, {bad} failed"
                          + (f", {news} answers with news" if tabs else ""), flush=True)
        finally:
            stop.set()
            app.terminate()
            app.wait(timeout=30)
    closed, opened = (sum(v) / len(v) for v in (rates["closed"], rates["open"]))
    print(f"{args.users} visitors: {closed:.0f} tok/s with the tab closed, {opened:.0f} with {args.tabs} open; "
          f"open / closed {opened / closed:.3f}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
