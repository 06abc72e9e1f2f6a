"""How long a visitor waits for a freshly started playground: process start to the page answering, and to the
first token of the first visitor's story.

    python bench/cold_start.py [--checkpoint tinygpt/assets/story-model] [--runs 2] [-- app flags...]

Starts `python app.py` with empty kernel and Inductor caches in a temporary folder (cold: what a Space that
was asleep, or a fresh clone, meets), then again with the caches the first start left (warm). Each start: the
seconds until GET / answers, then until the first streamed update of a story requested right then.
"""
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


def one_start(caches: Path, app_args: list[str]) -> tuple[float, float]:
    """(seconds to the page answering, seconds to the first token) from process start."""
    from gradio_client import Client

    port = free_port()
    env = {**os.environ, "XDG_CACHE_HOME": str(caches / "xdg"), "TORCHINDUCTOR_CACHE_DIR": str(caches / "inductor"),
           "GRADIO_ANALYTICS_ENABLED": "False"}
    t0 = time.perf_counter()
    app = subprocess.Popen([sys.executable, "app.py", "--port", str(port), *app_args], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/"
        while not page_answers(url):
            if app.poll() is not None:
                raise SystemExit(f"app.py exited with status {app.returncode}")
            time.sleep(0.05)
        page = time.perf_counter() - t0
        job = Client(url, verbose=False).submit("Once upon a time", 0.8, 50, 0.95, 32, 1, api_name="/generate")
        while not job.outputs():
            time.sleep(0.01)
        return page, time.perf_counter() - t0
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
            page, first = one_start(Path(tmp), app_args)
            print(f"{'cold' if i == 0 else 'warm'}: page answers after {page:.1f} s; first token after {first:.1f} s "
                  f"({first - page:.1f} s after the page)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
