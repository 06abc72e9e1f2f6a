"""Benchmark prepare_data.py against the raw tokenizer on the same text with the same threads.

    python bench/prepare.py [--data-dir ../shared/data/tinystories] [--num-proc 2]

Prints tokens/s of the whole prepare_data.py run (a subprocess: start-up, reading, writing included),
tokens/s of raw tiktoken encode_ordinary_batch on the same stories, their ratio, and peak RSS.
"""
import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tinygpt.data.sources import read_txt  # noqa: E402
from tinygpt.data.tokenizer import Tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "tinystories"))
    p.add_argument("--num-proc", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="best of N for each measurement")
    args = p.parse_args()
    train, val = Path(args.data_dir) / "train.txt", Path(args.data_dir) / "valid.txt"
    if not train.is_file():
        sys.exit(f"{train} not found: point --data-dir at TinyStories .txt files")
    run_best, pipeline_best = float("inf"), float("inf")
    with tempfile.TemporaryDirectory() as out:  # first, before this process grows: children inherit RSS
        for _ in range(args.repeats):
            cmd = [sys.executable, str(ROOT / "prepare_data.py"), "--train-files", str(train), "--val-files",
                   str(val), "--out-dir", out, "--num-proc", str(args.num_proc), "--force"]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            run_best = min(run_best, time.perf_counter() - t0)
            pipeline_best = min(pipeline_best, json.loads((Path(out) / "meta.json").read_text())["seconds"])
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    stories = list(read_txt(train)) + list(read_txt(val))
    enc = Tokenizer().enc
    raw_best, n_tokens = float("inf"), 0
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ids = enc.encode_ordinary_batch(stories, num_threads=args.num_proc)
        raw_best = min(raw_best, time.perf_counter() - t0)
        n_tokens = sum(map(len, ids)) + len(ids)  # + one <|endoftext|> per story, as prepare writes
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    raw, run, pipe = n_tokens / raw_best, n_tokens / run_best, n_tokens / pipeline_best
    print(f"tokens: {n_tokens:,} ({len(stories):,} stories), threads: {args.num_proc}")
    print(f"raw encode_ordinary_batch: {raw:,.0f} tokens/s ({raw_best:.2f}s)")
    print(f"prepare_data.py whole run: {run:,.0f} tokens/s ({run_best:.2f}s, start-up and I/O included)")
    print(f"prepare_data.py pipeline:  {pipe:,.0f} tokens/s ({pipeline_best:.2f}s, without start-up)")
    print(f"ratio_pipeline_vs_raw: {pipe / raw:.2f}")
    print(f"prepare_data.py peak RSS: {peak_mib:.0f} MiB")
    print(f"ratio_prepare_vs_raw: {run / raw:.2f}")


if __name__ == "__main__":
    main()
