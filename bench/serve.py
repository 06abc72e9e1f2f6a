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
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.visitor import PROMPT, Page, free_port, open_page, start_app, write_story  # noqa: E402


class EngineAlone:
    """The engine in this process (compiled, or the one-pass step) generating one story at a time: the most a single
    user could see.
    Timed as the page is (tokens over the time from the first to the last)."""

    def __init__(self, checkpoint: str, max_new: int) -> None:
        import torch

        from tinygpt import Engine, Tokenizer, load_checkpoint
        from tinygpt.kernels.quantize import default_precision, for_serving

        device = torch.device("cpu")
        model, _ = load_checkpoint(checkpoint, device)
        self.engine = Engine(for_serving(model, default_precision(device, model.config)), compile=True)
        self.ids, self.max_new = Tokenizer().encode(PROMPT), max_new
        self.rate(0)  # warm-up

    def rate(self, seed: int) -> float:
        from tinygpt import SamplingParams

        params = SamplingParams(max_new_tokens=self.max_new, seed=seed, stop_at_eot=False)  # the page's settings
        times = [time.perf_counter() for _ in self.engine.generate(self.ids, params)]
        return len(times) / (times[-1] - times[0])


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, round(0.95 * len(values)) - 1)]


def run_round(url: str, users: int, max_new: int, repeats: int) -> dict:
    """`repeats` rounds of `users` visitors arriving at once; all their records, and the median aggregate."""
    import httpx

    page = Page(url)

    async def one_round() -> list[dict]:
        limits = httpx.Limits(max_connections=4 * users + 8)
        async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as http:
            sessions = [await open_page(http, page) for _ in range(users)]  # untimed, one by one
            return await asyncio.gather(*(write_story(http, page, session, i, max_new, finish=False)
                                          for i, session in enumerate(sessions)))

    results, aggregates = [], []
    for _ in range(repeats):
        round_ = asyncio.run(one_round())
        results += round_
        ok = [r for r in round_ if r["ok"]]
        span = max((r["end"] for r in ok), default=1.0) - min((r["start"] for r in ok), default=0.0)
        aggregates.append(sum(r["tokens"] for r in ok) / span if ok else 0.0)
    return {"results": results, "aggregate": statistics.median(aggregates)}


def report(users: int, round_: dict, failures: list) -> float | None:
    """Print one N's figures; its failed requests are added to `failures`."""
    results = round_["results"]
    ok = [r for r in results if r["ok"]]
    failed = [r for r in results if not r["ok"] and r["kind"] == "failed"]
    refused = [r for r in results if not r["ok"] and r["kind"] == "refused"]
    failures += failed
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


def single_user(url: str, alone: EngineAlone, max_new: int, rounds: int, failures: list) -> None:
    """N=1, each round paired with one story from the engine alone (the host's load moves: a shared VM), and
    the ratio of their medians."""
    pairs = [(alone.rate(i + 1), run_round(url, 1, max_new, 1)) for i in range(rounds)]
    engine = statistics.median(a for a, _ in pairs)
    step = "one pass" if alone.engine.one_pass_step else "compiled"
    print(f"engine alone ({step}, one stream, rounds interleaved with N=1): {engine:.1f} tok/s", flush=True)
    rate = report(1, {"results": sum((r["results"] for _, r in pairs), []),
                      "aggregate": statistics.median(r["aggregate"] for _, r in pairs)}, failures)
    if rate:
        print(f"N=1 per-user tokens/s / engine alone: {rate / engine:.2f}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="checkpoint to serve (default: random reference-size weights)")
    p.add_argument("--users", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=64, help="stories decoded together (TINYGPT_CONCURRENCY)")
    p.add_argument("--max-queue", type=int, default=64, help="requests that may wait (TINYGPT_MAX_QUEUE)")
    p.add_argument("--repeats", type=int, default=3, help="rounds per N, four times as many for N=1 (pooled)")
    p.add_argument("--model-shape", default="", metavar="L,H,C",
                   help="the random model's layers, heads and width (default: the reference 6,6,384)")
    args = p.parse_args()
    failures: list = []
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint
        if not checkpoint:
            import torch

            from tinygpt import GPT, GPTConfig, save_checkpoint
            torch.manual_seed(0)
            shape = dict(zip(("n_layer", "n_head", "n_embd"), map(int, args.model_shape.split(",")))) \
                if args.model_shape else {}
            checkpoint = str(save_checkpoint(GPT(GPTConfig(**shape)), Path(tmp) / "random"))
        alone = EngineAlone(checkpoint, args.max_new_tokens)
        port = free_port()
        proc = start_app(checkpoint, port, {"TINYGPT_CONCURRENCY": str(args.concurrency),
                                            "TINYGPT_MAX_QUEUE": str(args.max_queue)})
        url = f"http://127.0.0.1:{port}/"
        try:
            print(f"app on 127.0.0.1:{port}, {args.concurrency} streams per step, {args.max_queue} may wait, "
                  f"{args.max_new_tokens} new tokens per request", flush=True)
            run_round(url, 1, 8, 1)  # warm up (the first request pays one-time costs)
            for n in args.users:
                if n == 1:
                    single_user(url, alone, args.max_new_tokens, 4 * args.repeats, failures)  # short: more rounds
                else:
                    report(n, run_round(url, n, args.max_new_tokens, args.repeats), failures)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    if failures:
        print(f"FAILED: {len(failures)} requests failed (first: {failures[0]['error'][:300]})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
