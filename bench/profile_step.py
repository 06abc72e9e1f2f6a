"""Where a decode step's time goes, operation by operation (issue 39's "measure first").

    python bench/profile_step.py [--checkpoint CKPT] [--batch 1 16] [--precision int4] [--steps 40]

One serving copy (the CPU's default precision unless --precision; random weights of the reference 30M shape
unless --checkpoint), eager, then the same step compiled, at each batch size: --steps decode steps mid-story under
torch.profiler after a warm-up. For the eager step, each operation's calls per step, microseconds per step and per
call, and its share of the operations' time (many calls of a few microseconds each are fixed cost: dispatch,
waking threads, quantizing an input row; a call's bytes over its time would be far below the memory's rate).
Then the eager step's time without the profiler and the compiled step's (best of 3 each), its tokens/s, and the rate
at which it reads the matmuls' weights (each layer's once a step, and the head's). Where the serving copy takes the
one-pass step (tinygpt.kernels.one_pass), its time too, split by subtraction (the profiler sees one call): the
engine's host work around it, the blocks, and the rest of the call (embedding, head, ranking, sampling: the same
step over the copy without its blocks).
"""
import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tinygpt import GPT, GPTConfig, load_checkpoint  # noqa: E402
from tinygpt.inference.engine import Engine  # noqa: E402
from tinygpt.inference.sampling import SamplingParams, settings_tensor  # noqa: E402
from tinygpt.kernels import one_pass  # noqa: E402
from tinygpt.kernels.quantize import default_precision, for_serving  # noqa: E402
from tinygpt.model.kv_cache import KVCache  # noqa: E402

PARAMS = SamplingParams(temperature=1.0, top_k=50, max_new_tokens=1024, seed=0, stop_at_eot=False, alternatives=5)


def prepared(engine: Engine, batch: int) -> tuple:
    """A cache and `batch` streams 64 tokens into a story (the prompt already read): decode steps only from here."""
    cache = engine.new_cache(engine.padded_size(batch))
    streams = [engine.new_stream([464] * 64, PARAMS) for _ in range(batch)]
    engine.advance(cache, streams)
    return cache, streams


def steps(engine: Engine, state: tuple, n: int) -> float:
    """Seconds per decode step over n steps."""
    t0 = time.perf_counter()
    for _ in range(n):
        engine.advance(*state)
    return (time.perf_counter() - t0) / n


def table(engine: Engine, batch: int, n: int, top: int) -> float:
    state = prepared(engine, batch)
    steps(engine, state, 5)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        per_step = steps(engine, state, n)
    rows = sorted((e for e in prof.key_averages() if e.self_cpu_time_total > 0),
                  key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows)
    print(f"  eager step: {per_step * 1e3:.3f} ms under the profiler")
    print(f"  {'operation':38s} {'calls/step':>10s} {'µs/step':>9s} {'µs/call':>8s} {'share':>6s}")
    for e in rows[:top]:
        print(f"  {e.key[:38]:38s} {e.count / n:10.1f} {e.self_cpu_time_total / n:9.1f} "
              f"{e.self_cpu_time_total / max(e.count, 1):8.1f} {e.self_cpu_time_total / total:6.1%}")
    print(f"  (the {min(top, len(rows))} above: {sum(e.self_cpu_time_total for e in rows[:top]) / total:.0%} of the "
          f"operations' time; {len(rows)} kinds of operation, {sum(e.count for e in rows) / n:.0f} calls a step)")
    return per_step


def one_pass_parts(served: GPT, batch: int, n: int) -> str:
    """The one-pass step's line: the engine's step, the step's call alone, and that call over the copy without its
    blocks (best of 3 each), in ms per step."""
    engine = Engine(served, batch_sizes=(batch,))
    n = min(n, served.config.block_size - 66)  # no slide (a prefill through the modules) among the steps timed
    whole = min(steps(engine, prepared(engine, batch), n) for _ in range(3))
    headless = copy.deepcopy(served)
    headless.transformer.h = torch.nn.ModuleList()
    c = served.config
    caches = (engine.new_cache(batch), KVCache(0, batch, c.n_head, c.block_size, c.n_embd // c.n_head,
                                               dtype=engine.cache_dtype))
    call, rest = (min(step_call(Engine(m).one_pass_step, cache, batch, n) for _ in range(3))
                  for m, cache in zip((served, headless), caches))
    return (f"  one-pass step: {whole * 1e3:.3f} ms, {batch / whole:,.0f} tokens/s; the call alone {call * 1e3:.3f} ms "
            f"(the blocks {(call - rest) * 1e3:.3f}, embedding + head + ranking + sampling {rest * 1e3:.3f}), the "
            f"engine's host work {(whole - call) * 1e3:.3f}")


def step_call(step: one_pass.OnePassStep, cache: KVCache, batch: int, n: int) -> float:
    """Seconds per call of the one-pass step alone (the same inputs each time, 64 tokens into a story)."""
    settings, idx, u = settings_tensor([PARAMS] * batch), torch.full((batch, 1), 464), torch.rand(batch)
    with torch.no_grad():
        t0 = time.perf_counter()
        for _ in range(n):
            cache.pos.fill_(64)
            step(idx, cache, settings, u, None)
    return (time.perf_counter() - t0) / n


def matmul_bytes(model: torch.nn.Module) -> int:
    """The bytes a decode step reads from the matmuls' weights (and scales): every layer once, and the head."""
    total = 0
    for module in model.modules():
        if any(word in type(module).__name__ for word in ("Linear", "Head")):
            total += sum(t.numel() * t.element_size()
                         for t in [*module.parameters(recurse=False), *module.buffers(recurse=False)])
    return total


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a checkpoint (default: random weights of the reference shape)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    p.add_argument("--precision", help="fp32, bf16, int8 or int4 (default: this CPU's default)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--top", type=int, default=15, help="operations listed")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    args = p.parse_args()
    torch.manual_seed(0)
    model = load_checkpoint(args.checkpoint)[0] if args.checkpoint else GPT(GPTConfig(dropout=0.0)).eval()
    precision = args.precision or default_precision(torch.device("cpu"), model.config)
    served = for_serving(model, precision)
    mb = matmul_bytes(served) / 1e6
    print(f"{model.num_params() / 1e6:.1f}M parameters, {precision} serving copy ({mb:.1f} MB of matmul weights "
          f"read per step), {torch.get_num_threads()} threads")
    for batch in args.batch:
        print(f"batch {batch}:")
        eager = table(Engine(served, batch_sizes=(batch,), one_pass=False), batch, args.steps, args.top)
        plain = Engine(served, batch_sizes=(batch,), one_pass=False)
        unprofiled = min(steps(plain, prepared(plain, batch), args.steps) for _ in range(3))
        line = f"  eager step, unprofiled: {unprofiled * 1e3:.3f} ms"
        if args.compile:
            engine = Engine(served, compile=True, batch_sizes=(batch,), one_pass=False)
            state = prepared(engine, batch)
            steps(engine, state, 5)
            compiled = min(steps(engine, state, args.steps) for _ in range(3))
            line += (f"; compiled step: {compiled * 1e3:.3f} ms, {batch / compiled:,.0f} tokens/s, the weights read "
                     f"at {mb / 1e3 / compiled:.1f} GB/s")
        print(line)
        if one_pass.unavailable(served) is None:
            print(one_pass_parts(served, batch, args.steps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
