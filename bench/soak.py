"""The playground under a crowd for a while: does it stay up, and does its memory level off?

    python bench/soak.py [--checkpoint tinygpt/assets/story-model] [--users 16] [--duration 10m]
    python bench/soak.py --users 64 --duration 2m
    python bench/soak.py --new-visitors --duration 5m          # a new page (a new Gradio session) per story

Starts `app.py` on a free loopback port and waits for its fast path (the one-pass or the compiled step;
`--no-compile`: no torch.compile), then N visitors press Generate back to back for the duration, each through
Gradio's queue with the page's defaults (200 new tokens: long enough that most stories slide past a 128-token
window) and a new seed each time, then the step the page runs after a story. With `--new-visitors` each story
comes from a new page load, as a stream of new visitors (each leaves a session behind on the server; see
`--max-sessions` in app.py). Prints, every 30 s and at the end: stories written and failed, tokens/s, and the
server's resident memory. Exits 1 if the server died or any story failed.
"""
import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.visitor import Page, free_port, open_page, rss_mb, start_app, write_story  # noqa: E402
from tinygpt.model.checkpoint import SHIPPED_MODEL  # noqa: E402
from tinygpt.training.budget import parse_duration  # noqa: E402


class Tally:
    """Stories written and failed so far, and the server's memory at each report."""

    def __init__(self) -> None:
        self.ok = self.tokens = 0
        self.failed: list[str] = []
        self.rss: list[tuple[float, float]] = []  # (seconds since start, MB)

    def line(self, elapsed: float, rss: float) -> str:
        self.rss.append((elapsed, rss))
        return (f"{elapsed:6.0f} s: {self.ok:5d} stories, {len(self.failed)} failed, "
                f"{self.tokens / max(elapsed, 1e-9):7.0f} tok/s, server RSS {rss:7.1f} MB")


async def visitor(i: int, page: Page, tally: Tally, end: float, max_new: int, new_visitors: bool) -> None:
    import httpx

    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0)) as http:
        session, seed = await open_page(http, page), i * 1_000_000
        while time.monotonic() < end:
            if new_visitors:
                session = await open_page(http, page)
            seed += 1
            result = await write_story(http, page, session, seed, max_new)
            if result["ok"]:
                tally.ok, tally.tokens = tally.ok + 1, tally.tokens + result["tokens"]
            else:
                tally.failed.append(result["error"])


async def soak(page: Page, pid: int, users: int, seconds: float, max_new: int, every: float,
               new_visitors: bool) -> Tally:
    tally, start = Tally(), time.monotonic()
    end = start + seconds
    crowd = asyncio.gather(*(visitor(i, page, tally, end, max_new, new_visitors) for i in range(users)))
    next_report = start + every
    while not crowd.done():
        await asyncio.wait([crowd], timeout=max(0.0, min(next_report, end) - time.monotonic()) + 0.05)
        if time.monotonic() >= next_report and not crowd.done():
            print(tally.line(time.monotonic() - start, rss_mb(pid)), flush=True)
            next_report += every
    crowd.result()
    print(tally.line(time.monotonic() - start, rss_mb(pid)), flush=True)
    return tally


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(SHIPPED_MODEL))
    p.add_argument("--users", type=int, default=16)
    p.add_argument("--duration", default="10m", help="how long the crowd writes (90s, 10m)")
    p.add_argument("--max-new-tokens", type=int, default=200, help="default: the page's")
    p.add_argument("--every", type=float, default=30.0, help="seconds between reports")
    p.add_argument("--new-visitors", action="store_true", help="a new page (Gradio session) for every story")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="serve eagerly")
    p.add_argument("--concurrency", type=int, default=32, help="stories decoded together (app.py's default)")
    args = p.parse_args()
    try:
        seconds = parse_duration(args.duration)
    except ValueError as e:
        p.error(str(e))
    port = free_port()
    with tempfile.TemporaryDirectory():
        proc = start_app(args.checkpoint, port, {"TINYGPT_CONCURRENCY": str(args.concurrency)}, args.compile)
        try:
            page = Page(f"http://127.0.0.1:{port}/")
            print(f"{args.users} visitors, {args.max_new_tokens} new tokens a story, "
                  f"{'a new page each story' if args.new_visitors else 'one page each'}, for {args.duration}; "
                  f"{'the fast path' if args.compile else '--no-compile'}; "
                  f"server RSS at start {rss_mb(proc.pid):.1f} MB",
                  flush=True)
            tally = asyncio.run(soak(page, proc.pid, args.users, seconds, args.max_new_tokens, args.every,
                                     args.new_visitors))
            died = proc.poll() is not None
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    after = [mb for t, mb in tally.rss if t >= 30.0] or [mb for _, mb in tally.rss]
    print(f"stories {tally.ok}, failed {len(tally.failed)}; RSS {after[0]:.1f} MB at the first report after 30 s, "
          f"{after[-1]:.1f} MB at the end (growth {after[-1] - after[0]:+.1f} MB)")
    if died:
        print(f"FAILED: the server died; its log ends:\n{proc.log_path.read_text()[-3000:]}", file=sys.stderr)
    if tally.failed:
        print(f"FAILED: {len(tally.failed)} stories failed (first: {tally.failed[0][:300]})", file=sys.stderr)
    return 1 if died or tally.failed else 0


if __name__ == "__main__":
    sys.exit(main())
