"""Batch-1 generation of this tree's engine against the engine at a git revision, in one run, rounds alternated.

    python bench/generate_ab.py --baseline f63b508 [--rounds 8] [--checkpoint DIR] [--precision int8]

This machine's speed drifts (±15% within an hour here), so two figures from two runs do not compare: only a
ratio from one sitting counts. Each side runs in a process of its own (the revision's code checked out into a
temporary folder with `git archive`), which builds its serving copy (the CPU's default precision unless
--precision; random weights of the reference 30M shape, seed 0, unless --checkpoint) with the compiled decode
step, warms up, then writes one story (an 8-token prompt, --new-tokens new, top-k 50, the playground's 5
alternatives per token) whenever it is asked. The sides are asked in the order A B B A A B ..., one at a time
(the other waits on its pipe), so a slow spell of the machine falls on both alike. Prints each round, each
side's median tokens/s, and `ratio: X` (the median of the rounds' this/baseline ratios). Exits 1 if a side fails.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Once upon a time, there was a little girl who"


def worker(args: argparse.Namespace) -> None:
    """One side: its tree's engine, a story per line read from stdin, its tokens/s written back."""
    sys.path.insert(0, args.tree)
    import torch

    from tinygpt import GPT, GPTConfig, Tokenizer, load_checkpoint
    from tinygpt.inference.engine import Engine
    from tinygpt.inference.sampling import SamplingParams
    try:
        from tinygpt.kernels.quantize import default_precision, for_serving
    except ImportError:  # revisions before the kernels had a package of their own
        from tinygpt.inference.quantize import default_precision, for_serving

    torch.manual_seed(0)
    model = load_checkpoint(args.checkpoint)[0] if args.checkpoint else GPT(GPTConfig()).eval()
    precision = args.precision or default_precision(torch.device("cpu"), model.config)
    engine = Engine(for_serving(model, precision), compile=args.compile)
    params = SamplingParams(temperature=1.0, top_k=50, top_p=1.0, max_new_tokens=args.new_tokens, seed=0,
                            stop_at_eot=False, alternatives=5)
    prompt = Tokenizer().encode(PROMPT)[:8]

    def story() -> float:
        t0 = time.perf_counter()
        n = sum(1 for _ in engine.generate(prompt, params))
        return n / (time.perf_counter() - t0)

    story(), story()  # warm-up: the compiled step's first calls
    print(json.dumps({"ready": precision, "compiled": bool(engine.compiled)}), flush=True)
    for _ in sys.stdin:
        print(json.dumps({"tok_s": story()}), flush=True)


class Side:
    """A worker process for one tree."""

    def __init__(self, name: str, tree: Path, args: argparse.Namespace) -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--tree", str(tree),
               "--new-tokens", str(args.new_tokens)]
        cmd += ["--checkpoint", args.checkpoint] if args.checkpoint else []
        cmd += ["--precision", args.precision] if args.precision else []
        cmd += [] if args.compile else ["--no-compile"]
        self.name = name
        self.proc = subprocess.Popen(cmd, cwd=tree, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONPATH": str(tree)})
        self.ready = self.answer()
        print(f"{name}: {tree} ready ({self.ready['ready']}, compiled: {self.ready['compiled']})", flush=True)

    def answer(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            sys.exit(f"{self.name}: its worker exited ({self.proc.wait()}) before answering")
        return json.loads(line)

    def story(self) -> float:
        self.proc.stdin.write("story\n")
        self.proc.stdin.flush()
        return self.answer()["tok_s"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def checkout(rev: str, into: Path) -> Path:
    """The files of `rev` (as committed) in a folder of their own."""
    archive = subprocess.run(["git", "archive", "--format=tar", rev], cwd=ROOT, capture_output=True)
    if archive.returncode:
        sys.exit(f"--baseline {rev}: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", help="the git revision to compare with (a commit, tag or branch)")
    p.add_argument("--rounds", type=int, default=8, help="stories per side, alternated A B B A ...")
    p.add_argument("--new-tokens", type=int, default=120)
    p.add_argument("--checkpoint", help="a checkpoint both sides load (default: random reference weights)")
    p.add_argument("--precision", help="fp32, bf16, int8 or int4 (default: the CPU's default)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="the eager decode step on both sides")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tree", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    if not args.baseline or args.rounds < 1:
        p.error("--baseline REV is required, and --rounds must be at least 1")
    with tempfile.TemporaryDirectory(prefix="tinygpt-baseline-") as folder:
        sides = [Side("this", ROOT, args), Side(f"baseline {args.baseline}", checkout(args.baseline, Path(folder)),
                                                args)]  # one at a time: the builds do not share the cores
        rates: dict[str, list[float]] = {side.name: [] for side in sides}
        for i in range(args.rounds):
            for side in sides if i % 2 == 0 else sides[::-1]:
                rates[side.name].append(side.story())
            print(f"round {i + 1}: " + ", ".join(f"{name} {r[-1]:.1f}" for name, r in rates.items()), flush=True)
        for side in sides:
            side.close()
    this, base = rates.values()
    for name, r in rates.items():
        print(f"{name}: median {statistics.median(r):.1f} tok/s (best {max(r):.1f})")
    print(f"ratio: {statistics.median(a / b for a, b in zip(this, base)):.3f}")


if __name__ == "__main__":
    main()
