"""Many users at once: N concurrent visitors against a running app on loopback, and the engine alone.

    python bench/serve.py [--checkpoint out/best] [--users 1 4 16 64] [--max-new-tokens 64] [--concurrency 64]

Measures the engine alone in this process (the app's precision, compiled, one stream: the most a single user
could see), one story in turn with each N=1 round, so both see the same load on a shared host. Starts `app.py`
on a free loopback port (a random reference-size model when no checkpoint is given) and for each N runs N users
at once, each streaming one story, `--repeats` times: N visitors open the page (untimed, one after another),
then all press Generate at the same moment. Per N it prints time to first token (from submitting to the first
streamed update) and tokens/s per user (tokens over the time from the first update to the last, as the engine
alone is timed from its first token to its last), median and p95, the aggregate tokens/s over all users,
failed requests, and refused ones (a full queue) with the message they got.
"""
import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PROMPT, SETTINGS = "Once upon a time", dict(temperature=0.8, top_k=50, top_p=0.95)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EngineAlone:
    """The compiled engine in this process generating one story at a time: the most a single user could see.
    Timed as the page is (tokens over the time from the first to the last)."""

    def __init__(self, checkpoint: str, max_new: int) -> None:
        import torch

        from tinygpt import Engine, Tokenizer, load_checkpoint
        from tinygpt.inference.quantize import default_precision, for_serving

        device = torch.device("cpu")
        model, _ = load_checkpoint(checkpoint, device)
        self.engine = Engine(for_serving(model, default_precision(device, model.config)), compile=True)
        self.ids, self.max_new = Tokenizer().encode(PROMPT), max_new
        self.rate(0)  # warm-up

    def rate(self, seed: int) -> float:
        from tinygpt import SamplingParams

        params = SamplingParams(**SETTINGS, max_new_tokens=self.max_new, seed=seed, stop_at_eot=False)
        times = [time.perf_counter() for _ in self.engine.generate(self.ids, params)]
        return len(times) / (times[-1] - times[0])


def start_app(checkpoint: str, port: int, concurrency: int, max_queue: int) -> subprocess.Popen:
    """app.py serving `checkpoint`, once its compiled decode step has taken over (the page opens before)."""
    env = {**os.environ, "TINYGPT_CONCURRENCY": str(concurrency), "TINYGPT_MAX_QUEUE": str(max_queue)}
    log = tempfile.NamedTemporaryFile("w+", prefix="serve-bench-app-", suffix=".log")
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--checkpoint", checkpoint, "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=log)
    proc.log = log  # kept open (and so on disk) for the life of the process
    for _ in range(1800):  # bounded wait: a first start builds the kernels and compiles in the background
        if "fast path:" in Path(log.name).read_text():
            return proc
        if proc.poll() is not None:
            sys.exit(f"the app exited: {Path(log.name).read_text()[-2000:]}")
        time.sleep(0.5)
    proc.kill()
    sys.exit("the app's fast path was not ready within 900 s")


async def open_page(http, base: str, load_index: int) -> str:
    """A visitor's page load, as far as the server sees it: the page's load event under a new session, which
    is when Gradio builds the session's state (a copy of every component's config: 7.5 ms for this page here).
    The session, for one_user."""
    session = uuid.uuid4().hex
    loaded = await http.post(base + "gradio_api/run/predict", json={
        "data": [], "fn_index": load_index, "session_hash": session, "event_data": None, "trigger_id": None})
    loaded.raise_for_status()
    return session


async def one_user(http, base: str, fn_index: int, session: str, seed: int, max_new: int) -> dict:
    """One visitor with the page open presses Generate: Gradio's own streaming protocol (join the queue, read
    the event stream), as the page's JavaScript does. Not gradio_client: it polls for messages every 50 ms,
    which would hide what the server does, and its polling threads take CPU from the server on this 2-core
    machine."""
    from gradio_client.utils import apply_diff

    start = time.perf_counter()
    try:
        joined = await http.post(base + "gradio_api/queue/join", json={
            "data": [PROMPT, *SETTINGS.values(), max_new, seed], "fn_index": fn_index, "session_hash": session,
            "event_data": None, "trigger_id": None})
        if joined.status_code != 200:
            return {"ok": False, "kind": "refused" if joined.status_code == 503 else "failed", "error": joined.text}
        first = stats = None
        async with http.stream("GET", base + "gradio_api/queue/data", params={"session_hash": session}) as resp:
            buffer = b""
            async for chunk in resp.aiter_bytes():
                buffer += chunk
                while b"\n\n" in buffer:
                    line, buffer = buffer.split(b"\n\n", 1)
                    if not line.startswith(b"data:"):
                        continue
                    msg = json.loads(line[5:])
                    if msg["msg"] == "process_generating":
                        last = time.perf_counter()
                        first = first or last
                        data = msg["output"]["data"][1]  # the stats line: in full once, then as diffs
                        stats = data if stats is None else apply_diff(stats, data)
                    elif msg["msg"] == "process_completed":
                        end = time.perf_counter()
                        if not msg.get("success", False):
                            error = str(msg.get("output", {}).get("error"))
                            return {"ok": False, "kind": "refused" if "busy" in error else "failed", "error": error}
                        tokens = int(re.search(r"\*\*(\d+)\*\* tokens", stats).group(1))
                        return {"ok": True, "ttft": first - start, "tok_s": tokens / (last - first) if last > first
                                else 0.0, "tokens": tokens, "start": start, "end": end}
        return {"ok": False, "kind": "failed", "error": "the event stream ended early"}
    except Exception as e:  # noqa: BLE001 - counted as a failed request
        return {"ok": False, "kind": "failed", "error": f"{type(e).__name__}: {e}"}


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, round(0.95 * len(values)) - 1)]


def run_round(url: str, users: int, max_new: int, repeats: int) -> dict:
    """`repeats` rounds of `users` visitors arriving at once; all their records, and the median aggregate."""
    import httpx

    config = json.loads(urllib.request.urlopen(url + "config", timeout=10).read())
    fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "generate")
    load_index = next(d["id"] for d in config["dependencies"] if any(t[1] == "load" for t in d["targets"]))

    async def one_round() -> list[dict]:
        limits = httpx.Limits(max_connections=4 * users + 8)
        async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as http:
            sessions = [await open_page(http, url, load_index) for _ in range(users)]  # untimed, one by one
            return await asyncio.gather(*(one_user(http, url, fn_index, session, i, max_new)
                                          for i, session in enumerate(sessions)))

    results, aggregates = [], []
    for _ in range(repeats):
        round_ = asyncio.run(one_round())
        results += round_
        ok = [r for r in round_ if r["ok"]]
        span = max((r["end"] for r in ok), default=1.0) - min((r["start"] for r in ok), default=0.0)
        aggregates.append(sum(r["tokens"] for r in ok) / span if ok else 0.0)
    return {"results": results, "aggregate": statistics.median(aggregates)}


def report(users: int, round_: dict) -> float | None:
    results = round_["results"]
    ok = [r for r in results if r["ok"]]
    failed = [r for r in results if not r["ok"] and r["kind"] == "failed"]
    refused = [r for r in results if not r["ok"] and r["kind"] == "refused"]
    tail = f"; failed {len(failed)}; refused {len(refused)}"
    tail += f" ({refused[0]['error']})" if refused else ""
    tail += f" [first failure: {failed[0]['error'][:200]}]" if failed else ""
    if not ok:
        print(f"N={users:>2}: no request succeeded{tail}", flush=True)
        return None
    ttft, rate = [r["ttft"] for r in ok], [r["tok_s"] for r in ok]
    print(f"N={users:>2}: time to first token median {statistics.median(ttft):.2f}s p95 {p95(ttft):.2f}s; "
          f"tokens/s per user median {statistics.median(rate):.1f} p95 {p95(rate):.1f}; "
          f"aggregate {round_['aggregate']:.0f} tok/s{tail}", flush=True)
    return statistics.median(rate)


def single_user(url: str, alone: EngineAlone, max_new: int, rounds: int) -> None:
    """N=1, each round paired with one story from the engine alone (the host's load moves: a shared VM), and
    the ratio of their medians."""
    pairs = [(alone.rate(i + 1), run_round(url, 1, max_new, 1)) for i in range(rounds)]
    engine = statistics.median(a for a, _ in pairs)
    print(f"engine alone (compiled, one stream, rounds interleaved with N=1): {engine:.1f} tok/s", flush=True)
    rate = report(1, {"results": sum((r["results"] for _, r in pairs), []),
                      "aggregate": statistics.median(r["aggregate"] for _, r in pairs)})
    if rate:
        print(f"N=1 per-user tokens/s / engine alone: {rate / engine:.2f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="checkpoint to serve (default: random reference-size weights)")
    p.add_argument("--users", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=64, help="stories decoded together (TINYGPT_CONCURRENCY)")
    p.add_argument("--max-queue", type=int, default=64, help="requests that may wait (TINYGPT_MAX_QUEUE)")
    p.add_argument("--repeats", type=int, default=3, help="rounds per N, four times as many for N=1 (pooled)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint
        if not checkpoint:
            import torch

            from tinygpt import GPT, GPTConfig, save_checkpoint
            torch.manual_seed(0)
            checkpoint = str(save_checkpoint(GPT(GPTConfig()), Path(tmp) / "random"))
        alone = EngineAlone(checkpoint, args.max_new_tokens)
        port = free_port()
        proc = start_app(checkpoint, port, args.concurrency, args.max_queue)
        url = f"http://127.0.0.1:{port}/"
        try:
            print(f"app on 127.0.0.1:{port}, {args.concurrency} streams per step, {args.max_queue} may wait, "
                  f"{args.max_new_tokens} new tokens per request", flush=True)
            run_round(url, 1, 8, 1)  # warm up (the first request pays one-time costs)
            for n in args.users:
                if n == 1:
                    single_user(url, alone, args.max_new_tokens, 4 * args.repeats)  # short: more rounds
                else:
                    report(n, run_round(url, n, args.max_new_tokens, args.repeats))
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
