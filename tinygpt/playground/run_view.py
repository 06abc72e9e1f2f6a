"""What the Training tab shows of a run, as data and text: the loss curves as a table for Gradio's plot, the status
line (step, tokens/s, time left, ended or stopped, the step the playground serves), the sample stories newest
first, and a run's records for the API. Reading is cached per run folder and redone only when a file changed, so
a tab left open costs a few file stats every few seconds."""
from __future__ import annotations

import html
import threading
from pathlib import Path

import pandas as pd

from tinygpt.evaluation.history import ENDED, METRICS, PROGRESS, RUNNING, Run, list_snapshots, read_run
from tinygpt.evaluation.quality import headline
from tinygpt.evaluation.story_loss import story_line

CURVE_TYPES = {"step": "int64", "loss": "float64", "split": "str", "tokens seen (M)": "float64", "minutes": "float64"}


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


class RunCache:
    """The latest read of each run folder, shared by every visitor; re-read only when its files changed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[Path, tuple[tuple, Run]] = {}

    def stamp(self, directory: Path) -> tuple:
        """What changes when the run wrote something (and, for a run in progress, when its process ended)."""
        run = self._runs.get(directory)
        state = run[1].state if run else None
        return (_mtime(directory / METRICS), _mtime(directory / PROGRESS), _mtime(directory / "history"),
                directory.is_dir(), state)

    def read(self, directory: Path) -> tuple[tuple, Run]:
        directory = Path(directory)
        with self._lock:
            files = self.stamp(directory)[:4]
            cached = self._runs.get(directory)
            if cached is None or cached[0][:4] != files or cached[1].state == RUNNING:
                run = read_run(directory)
                cached = ((*files, run.state), run)
                self._runs[directory] = cached
            return cached


def curve_frame(run: Run) -> pd.DataFrame | None:
    """One row per evaluation and split: what the plot draws and its tooltip shows; None before the first
    evaluation (Gradio's plot takes its axes' kinds from the first table it gets: an empty one, all 'object'
    columns, would leave the loss an axis of categories and draw no line, even once points come)."""
    rows = []
    start = run.progress.get("started") or next((r["time"] for r in run.records if "time" in r), None)
    for r in run.records:
        minutes = round((r["time"] - start) / 60, 1) if start and isinstance(r.get("time"), (int, float)) else None
        for split in ("train", "val"):
            if isinstance(r.get(f"{split}_loss"), (int, float)):
                rows.append((r["step"], round(r[f"{split}_loss"], 4), split, round(r.get("tokens_seen", 0) / 1e6, 2),
                             minutes))
    return pd.DataFrame(rows, columns=list(CURVE_TYPES)).astype(CURVE_TYPES) if rows else None


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0, int(seconds))
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min" if seconds >= 3600 else \
        f"{seconds // 60} min {seconds % 60:02d} s"


def status_text(run: Run, serving: str = "") -> str:
    """Markdown: where the run is, how fast, how long it has left, or how it ended; then what is served."""
    p, lines = run.progress, []
    step = p.get("step") or (run.records[-1]["step"] if run.records else None)
    if run.state == RUNNING:
        rate = f" · {p['tokens_per_sec']:,.0f} tokens/s" if p.get("tokens_per_sec") else ""
        lines.append(f"**Training** in `{run.directory}`: step **{step:,}** of {p.get('max_iters', 0):,}{rate} · "
                     f"about {duration(p.get('seconds_left'))} left")
    elif run.state is not None:
        verb = "ended" if run.state == ENDED else "stopped"
        why = f" ({p['reason']})" if p.get("reason") else ""
        lines.append(f"The run in `{run.directory}` **{verb}** at step {step:,}{why}.")
    elif run.records:
        lines.append(f"The run in `{run.directory}`: {len(run.records)} evaluations, the last at step {step:,}.")
    if run.records:
        last = run.records[-1]
        lines.append(f"Last evaluation, step {last['step']:,}: train {last['train_loss']:.3f}, "
                     f"val **{last['val_loss']:.3f}** nats/token")
    if run.problem:
        lines.append(run.problem)
    if serving:
        lines.append(serving)
    return "  \n".join(lines)


def samples_html(run: Run, limit: int = 40) -> str:
    """The sample story of each evaluation with its figures, newest first."""
    parts = []
    for r in reversed(run.records[-limit:]):
        if not r.get("sample"):
            continue
        said = [f"val {r['val_loss']:.3f}"]
        said += [f"story loss {story_line(r['story_loss'])}"] if r.get("story_loss") else []
        said += [headline(r["sample_quality"])] if r.get("sample_quality") else []
        parts.append(f"<div class='run-sample'><b>Step {r['step']:,}</b> · {html.escape(' · '.join(said))}"
                     f"<p>{html.escape(r['sample'])}</p></div>")
    return "\n".join(parts) or "<p>No sample stories yet: the run writes one at each evaluation.</p>"


def run_record(run: Run, serving_step: int | None = None) -> dict:
    """The run for the API: its state and progress, every evaluation (with its sample), the snapshots' steps."""
    return {"directory": str(run.directory), "state": run.state, "progress": run.progress,
            "records": list(run.records), "snapshots": [s.step for s in run.snapshots],
            "serving_step": serving_step, "problem": run.problem}


def snapshot_at(directory: Path, step: int):
    """The snapshot of the run in `directory` at `step`; ValueError naming the steps there are."""
    snapshots = list_snapshots(directory)
    found = next((s for s in snapshots if s.step == step), None)
    if found is None:
        steps = ", ".join(str(s.step) for s in snapshots) or "none: train with --snapshots N"
        raise ValueError(f"no snapshot at step {step} in {directory}; there are: {steps}")
    return found
