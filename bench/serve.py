"""Many users at once: N concurrent gradio_client users against a running app on loopback.

    python bench/serve.py [--checkpoint out/best] [--users 1 4 16] [--max-new-tokens 64]

Starts `app.py` on a free loopback port (a random reference-size model when no checkpoint is given),
then for each N runs N users at once, each streaming one story. Prints time to first token and
tokens/s per user (median, p95) and the count of failed requests, for each N.
"""
import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(checkpoint: str, port: int, concurrency: int) -> subprocess.Popen:
    env = {**os.environ, "TINYGPT_CONCURRENCY": str(concurrency), "TINYGPT_MAX_QUEUE": "256"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--checkpoint", checkpoint, "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(240):  # bounded wait for the server
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=1)
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    sys.exit("the app did not start within 120 s")


def one_user(url: str, seed: int, max_new: int, out: list, lock: threading.Lock) -> None:
    from gradio_client import Client

    try:
        client = Client(url, verbose=False)
        start = time.perf_counter()  # from submitting, not from fetching the app's config
        job = client.submit("Once upon a time", 0.8, 50, 0.95, max_new, seed,
                                                api_name="/generate")
        first, last = None, None
        for update in job:  # streamed outputs
            first = first or time.perf_counter()
            last = update
        end = time.perf_counter()
        tokens = int(re.search(r"\*\*(\d+)\*\* tokens", last[1]).group(1))
        record = {"ttft": first - start, "tok_s": tokens / (end - first) if end > first else 0.0, "ok": True}
    except Exception as e:  # counted as a failed request
        record = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    with lock:
        out.append(record)


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, round(0.95 * len(values)) - 1)]


def run_round(url: str, users: int, max_new: int) -> None:
    results, lock = [], threading.Lock()
    threads = [threading.Thread(target=one_user, args=(url, i, max_new, results, lock)) for i in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    ok = [r for r in results if r["ok"]]
    failed = users - len(ok)
    if not ok:
        print(f"N={users:>2}: all {users} requests failed: {results[0].get('error') if results else 'timeout'}")
        return
    ttft, rate = [r["ttft"] for r in ok], [r["tok_s"] for r in ok]
    print(f"N={users:>2}: time to first token median {statistics.median(ttft):.2f}s p95 {p95(ttft):.2f}s; "
          f"tokens/s per user median {statistics.median(rate):.1f} p95 {p95(rate):.1f}; failed {failed}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="checkpoint to serve (default: random reference-size weights)")
    p.add_argument("--users", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=4, help="the app's generation slots (TINYGPT_CONCURRENCY)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint
        if not checkpoint:
            import torch

            from tinygpt import GPT, GPTConfig, save_checkpoint
            torch.manual_seed(0)
            checkpoint = str(save_checkpoint(GPT(GPTConfig()), Path(tmp) / "random"))
        port = free_port()
        proc = start_app(checkpoint, port, args.concurrency)
        try:
            print(f"app on 127.0.0.1:{port}, {args.concurrency} generation slots, {args.max_new_tokens} new tokens "
                  f"per request", flush=True)
            for n in args.users:
                run_round(f"http://127.0.0.1:{port}/", n, args.max_new_tokens)
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
