"""The CPU recipe search: train candidate shapes for the same wall-clock budget and compare validation loss.

    python bench/cpu_recipe.py --budget 10m [--only 4x256 6x256]    # screen
    python bench/cpu_recipe.py --budget 60m --only 6x256            # confirm the best
    python bench/cpu_recipe.py --table                               # print every result so far

Each candidate is a real `train.py --preset cpu --time-budget B` run with its own flags, one after another (they
would fight over the cores), on prepare_data.py's memmaps of ../shared/data/tinystories (train.txt / valid.txt).
For each run it records tokens/s, peak resident memory (of that process alone, from wait4) and the final loss
over every validation token; results accumulate in bench/results/cpu_recipe.jsonl.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "cpu_recipe.jsonl"
CANDIDATES = {  # name: flags on top of --preset cpu
    "2x128": ["--n-layer", "2", "--n-embd", "128", "--n-head", "2", "--learning-rate", "3e-3"],
    "4x256": ["--n-layer", "4", "--n-embd", "256", "--n-head", "4"],
    "4x256-lr3e-3": ["--n-layer", "4", "--n-embd", "256", "--n-head", "4", "--learning-rate", "3e-3",
                     "--min-lr", "3e-4"],
    "6x256": ["--n-layer", "6", "--n-embd", "256", "--n-head", "4"],
    "8x256": ["--n-layer", "8", "--n-embd", "256", "--n-head", "4"],
    "4x384": ["--n-layer", "4", "--n-embd", "384", "--n-head", "6", "--learning-rate", "1.5e-3"],
    "6x384": ["--n-layer", "6", "--n-embd", "384", "--n-head", "6", "--learning-rate", "1.5e-3"],
    "6x384-d0.1": ["--n-layer", "6", "--n-embd", "384", "--n-head", "6", "--learning-rate", "1.5e-3",
                   "--dropout", "0.1"],
    "reference-full-head": ["--n-layer", "6", "--n-embd", "384", "--n-head", "6", "--learning-rate", "1e-3",
                            "--dropout", "0.1", "--no-data-vocab"],
}


def run(name: str, budget: str, data_dir: str) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"cpu-recipe-{name}-"))
    cmd = [sys.executable, str(ROOT / "train.py"), "--preset", "cpu", "--time-budget", budget, "--data-dir",
           data_dir, "--out-dir", str(out), *CANDIDATES[name]]
    t0 = time.monotonic()
    with open(out / "train.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]
    info = json.loads((out / "last" / "config.json").read_text())
    return dict(name=name, budget=budget, flags=CANDIDATES[name], exit=os.waitstatus_to_exitcode(status),
                wall_s=round(time.monotonic() - t0, 1), params_m=round(info["num_params"] / 1e6, 2),
                steps=last["step"], tokens_m=round(last["tokens_seen"] / 1e6, 2),
                tokens_per_sec=round(sum(r["tokens_per_sec"] for r in records) / len(records)),
                peak_rss_mb=round(usage.ru_maxrss / 1024), val_loss_all=last.get("val_loss_all"),
                curve=[(r["step"], round(r["val_loss"], 4)) for r in records], out_dir=str(out))


def table(rows: list[dict]) -> str:
    lines = ["| candidate | budget | params | steps | tokens | tok/s | peak RSS | val loss (all of valid.txt) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['budget']} | {r['params_m']}M | {r['steps']} | {r['tokens_m']}M | "
                     f"{r['tokens_per_sec']:,} | {r['peak_rss_mb']:,} MB | {r['val_loss_all']:.4f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", default="10m")
    p.add_argument("--only", nargs="+", choices=sorted(CANDIDATES), default=sorted(CANDIDATES))
    p.add_argument("--data-dir", default="data/tinystories")
    p.add_argument("--table", action="store_true", help="print the results so far and exit")
    args = p.parse_args()
    if not args.table:
        if not (ROOT / args.data_dir / "train.bin").exists():
            sys.exit(f"{args.data_dir}/train.bin missing: python prepare_data.py --train-files "
                     "../shared/data/tinystories/train.txt --val-files ../shared/data/tinystories/valid.txt")
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        for name in args.only:
            row = run(name, args.budget, args.data_dir)
            with open(RESULTS, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines()] if RESULTS.exists() else []
    print(table(rows))


if __name__ == "__main__":
    main()
