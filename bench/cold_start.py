"""How long a visitor waits for a freshly started playground: process start to the page answering, to the
first token of the first visitor's story, and to the compiled decode step taking over from the eager one.

    python bench/cold_start.py [--checkpoint tinygpt/assets/story-model] [--runs 2] [-- app flags...]

Starts `python app.py` with empty kernel and Inductor caches in a temporary folder (cold: what a Space that
was asleep, or a fresh clone, meets), then again with the caches the first start left (warm). Each start: the
seconds until GET / answers, then until the first streamed update of a story requested right then, then until
the app logs that the fast path took over; and the tokens/s the page showed for a story before and after.
"""
import re
import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def page_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def tokens_per_s(job) -> float:
    """The tokens/s on a finished story's stats line."""
    job.result()
    return float(re.search(r"\*\*([\d.]+)\*\* tokens/s", job.outputs()[-1][1]).group(1))


def one_start(caches: Path, app_args: list[str]) -> dict[str, float]:
    """Seconds from process start to the page answering, the first token and the fast path; tokens/s before
    and after it."""
    from gradio_client import Client

    port, log = free_port(), caches / "app.log"
    env = {**os.environ, "XDG_CACHE_HOME": str(caches / "xdg"), "TORCHINDUCTOR_CACHE_DIR": str(caches / "inductor"),
           "GRADIO_ANALYTICS_ENABLED": "False"}
    t0 = time.perf_counter()
    with open(log, "w") as err:
        app = subprocess.Popen([sys.executable, "app.py", "--port", str(port), *app_args], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=err)
    try:
        url, out = f"http://127.0.0.1:{port}/", {}
        while not page_answers(url):
            if app.poll() is not None:
                raise SystemExit(f"app.py exited with status {app.returncode}: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        out["page"] = time.perf_counter() - t0
        client = Client(url, verbose=False)
        job = client.submit("Once upon a time", 0.8, 50, 0.95, 100, 1, api_name="/generate")
        while not job.outputs():
            time.sleep(0.01)
        out["first token"] = time.perf_counter() - t0
        out["tok/s warming"] = tokens_per_s(job)
        while "fast path:" not in log.read_text():
            if app.poll() is not None or time.perf_counter() - t0 > 900:
                raise SystemExit(f"no fast path: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        out["fast path"] = time.perf_counter() - t0
        out["tok/s fast"] = tokens_per_s(client.submit("Once upon a time", 0.8, 50, 0.95, 100, 1, api_name="/generate"))
        return out
    finally:
        app.terminate()
        app.wait(timeout=30)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="what app.py serves (default: its own choice)")
    p.add_argument("--runs", type=int, default=2, help="starts in all: the first cold, the others warm")
    args, app_args = p.parse_known_args()
    app_args = [a for a in app_args if a != "--"] + (["--checkpoint", args.checkpoint] if args.checkpoint else [])
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            r = one_start(Path(tmp), app_args)
            print(f"{'cold' if i == 0 else 'warm'}: page answers after {r['page']:.1f} s; first token after "
                  f"{r['first token']:.1f} s ({r['first token'] - r['page']:.1f} s after the page); compiled step "
                  f"takes over after {r['fast path']:.1f} s; a story at {r['tok/s warming']:.0f} tok/s before it, "
                  f"{r['tok/s fast']:.0f} after", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
