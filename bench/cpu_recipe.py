"""The CPU recipe search: train candidate shapes for the same wall-clock budget and compare validation loss.

    python bench/cpu_recipe.py --budget 15m --only 4x256-adamw-cosine 4x256-muon-wsd   # screen
    python bench/cpu_recipe.py --budget 60m --only preset                              # confirm --preset cpu
    python bench/cpu_recipe.py --table                                                 # every result so far

Each candidate is a real `train.py --preset cpu --time-budget B` run with its own flags, one after another (they
would fight over the cores), on prepare_data.py's memmaps of ../shared/data/tinystories (train.txt / valid.txt).
For each run it records tokens/s, peak resident memory (of that process alone, from wait4), train and val loss
at each evaluation (fixed batches: 41k of valid.txt's 99k tokens), the minutes from the process start to the
first evaluation at or under 2.4, 2.3 and 2.228, and the final loss over every validation token; results
accumulate in bench/results/cpu_recipe.jsonl. Rerun the AdamW baseline (4x256-adamw-cosine) in the same hour as
what it is compared with: this host's speed drifts by +-15%.
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
SHAPES = {"4x256": ["--n-layer", "4", "--n-embd", "256", "--n-head", "4"],
          "6x256": ["--n-layer", "6", "--n-embd", "256", "--n-head", "4"],
          "4x384": ["--n-layer", "4", "--n-embd", "384", "--n-head", "6"]}
# Candidates pin everything they screen, so each means the same whatever --preset cpu is now.
OLD = ["--optimizer", "adamw", "--schedule", "cosine", "--weight-decay", "0.1", "--dropout", "0.0", "--ema", "0"]
MUON_WSD = ["--optimizer", "muon", "--schedule", "wsd", "--cooldown-frac", "0.4"]
PLAIN, REG = ["--weight-decay", "0.1", "--dropout", "0.0"], ["--weight-decay", "0.5", "--dropout", "0.1"]
CANDIDATES = {  # name: flags on top of --preset cpu
    # the shape screen of 2026-11-24, on the recipe before issue 24 (AdamW, cosine)
    "2x128": ["--n-layer", "2", "--n-embd", "128", "--n-head", "2", "--learning-rate", "3e-3", *OLD],
    "4x256-adamw-cosine": [*SHAPES["4x256"], *OLD],  # the baseline: --preset cpu before issue 24
    "4x256-lr3e-3": [*SHAPES["4x256"], "--learning-rate", "3e-3", "--min-lr", "3e-4", *OLD],
    "6x256": [*SHAPES["6x256"], *OLD],
    "4x384": [*SHAPES["4x384"], "--learning-rate", "1.5e-3", *OLD],
    "6x384": ["--n-layer", "6", "--n-embd", "384", "--n-head", "6", "--learning-rate", "1.5e-3", *OLD],
    # issue 24: Muon on the hidden matrices, warmup-stable-decay; regularization for ~11 passes; averaging
    "4x256-muon-wsd": [*SHAPES["4x256"], *MUON_WSD, *PLAIN, "--ema", "0"],
    "4x256-muon-wsd-lr4e-3": [*SHAPES["4x256"], *MUON_WSD, *PLAIN, "--learning-rate", "4e-3", "--ema", "0"],
    "4x256-muon-wsd-wd0.5": [*SHAPES["4x256"], *MUON_WSD, "--weight-decay", "0.5", "--dropout", "0.0",
                             "--ema", "0"],
    "4x256-muon-wsd-wd0.5-d0.1": [*SHAPES["4x256"], *MUON_WSD, *REG, "--ema", "0"],
    "4x256-muon-wsd-wd1-d0.1": [*SHAPES["4x256"], *MUON_WSD, "--weight-decay", "1.0", "--dropout", "0.1",
                                "--ema", "0"],
    "6x256-muon-wsd-wd0.5": [*SHAPES["6x256"], *MUON_WSD, "--weight-decay", "0.5", "--dropout", "0.0",
                             "--ema", "0"],
    "6x256-muon-wsd-wd0.5-d0.1": [*SHAPES["6x256"], *MUON_WSD, *REG, "--ema", "0"],
    "preset": [],  # --preset cpu as it is now (4x256-muon-wsd-wd0.5 with --ema 0.998)
    # issue 33: the window, with the batch in tokens kept equal (4,096 a micro-batch, 8,192 a step)
    "window-128": ["--block-size", "128", "--batch-size", "32", "--half-window-frac", "0"],
    "window-256": ["--block-size", "256", "--batch-size", "16", "--half-window-frac", "0"],
    "window-512": ["--block-size", "512", "--batch-size", "8", "--half-window-frac", "0"],
    # windows of 128 until the cooldown, then 256 (--half-window-frac)
    "window-256-half0.6": ["--block-size", "256", "--batch-size", "16", "--half-window-frac", "0.6"],
}
DATA = "data/tinystories"
TARGETS = (2.4, 2.3, 2.228)  # val losses to time: the milestones and the shipped model's best


def minutes_to(records: list[dict], start: float) -> dict[str, float | None]:
    """Minutes from the process start to the first evaluation at or below each target val loss (None: never)."""
    out = {}
    for target in TARGETS:
        hit = next((r for r in records if r["val_loss"] <= target), None)
        out[str(target)] = round((hit["time"] - start) / 60, 1) if hit else None
    return out


def run(name: str, budget: str, data_dir: str) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"cpu-recipe-{name}-"))
    cmd = [sys.executable, str(ROOT / "train.py"), "--preset", "cpu", "--time-budget", budget, "--data-dir",
           data_dir, "--out-dir", str(out), *CANDIDATES[name]]
    t0, start = time.monotonic(), time.time()
    with open(out / "train.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]
    info = json.loads((out / "last" / "config.json").read_text())
    return dict(name=name, budget=budget, flags=CANDIDATES[name], data_dir=data_dir, exit=os.waitstatus_to_exitcode(status),
                wall_s=round(time.monotonic() - t0, 1), params_m=round(info["num_params"] / 1e6, 2),
                steps=last["step"], tokens_m=round(last["tokens_seen"] / 1e6, 2),
                tokens_per_sec=round(sum(r["tokens_per_sec"] for r in records) / len(records)),
                peak_rss_mb=round(usage.ru_maxrss / 1024), val_loss_all=last.get("val_loss_all"),
                minutes_to=minutes_to(records, start),
                curve=[(r["step"], round((r["time"] - start) / 60, 1), round(r["train_loss"], 4),
                        round(r["val_loss"], 4)) for r in records], out_dir=str(out))


def table(rows: list[dict]) -> str:
    lines = ["| candidate | budget | params | steps | tokens | tok/s | peak RSS | minutes to 2.4 / 2.3 / 2.228 | "
             "last train / val | val loss (all of valid.txt) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        reach = " / ".join("-" if m is None else f"{m}" for m in r.get("minutes_to", {}).values()) or "n/a"
        train, val = (r["curve"][-1][-2:] if len(r["curve"][-1]) == 4 else ("n/a", r["curve"][-1][-1]))
        name = r["name"] + (f" ({Path(r['data_dir']).name})" if r.get("data_dir", DATA) != DATA else "")
        lines.append(f"| {name} | {r['budget']} | {r['params_m']}M | {r['steps']} | {r['tokens_m']}M | "
                     f"{r['tokens_per_sec']:,} | {r['peak_rss_mb']:,} MB | {reach} | {train} / {val} | "
                     f"{r['val_loss_all']:.4f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", default="10m")
    p.add_argument("--only", nargs="+", choices=sorted(CANDIDATES), default=sorted(CANDIDATES))
    p.add_argument("--data-dir", default=DATA)
    p.add_argument("--table", action="store_true", help="print the results so far and exit")
    p.add_argument("--results", type=Path, default=RESULTS, help="the JSON-lines file results accumulate in")
    args = p.parse_args()
    if not args.table:
        if not (ROOT / args.data_dir / "train.bin").exists():
            sys.exit(f"{args.data_dir}/train.bin missing: python prepare_data.py --train-files "
                     "../shared/data/tinystories/train.txt --val-files ../shared/data/tinystories/valid.txt")
        args.results.parent.mkdir(parents=True, exist_ok=True)
        for name in args.only:
            row = run(name, args.budget, args.data_dir)
            with open(args.results, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    rows = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()] \
        if args.results.exists() else []
    print(table(rows))


if __name__ == "__main__":
    main()
