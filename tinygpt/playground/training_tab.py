"""The Training tab: how the served model (or the run in out/) learned, live while train.py writes it. The loss
curves (hover a point for its step, loss, tokens seen and minutes), the step, tokens/s and time left, the sample
story of each evaluation newest first, and one prompt written by every snapshot the run kept, so a reader sees
noise turn into words, then sentences, then stories. The page asks every few seconds, and only while the tab is
open; an answer with nothing new is skipped. Also the API's `training_run` and `snapshot_story`."""
from __future__ import annotations

import html
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import gradio as gr

from tinygpt.data.tokenizer import Tokenizer
from tinygpt.evaluation.history import Run, run_folder
from tinygpt.inference.sampling import SamplingParams
from tinygpt.inference.story import generate
from tinygpt.model.checkpoint import CheckpointError, load_checkpoint
from tinygpt.playground.registry import ModelRegistry
from tinygpt.playground.run_view import RunCache, curve_frame, run_record, samples_html, snapshot_at, status_text

POLL_S = 3  # how often an open tab asks for news
STORIES_KEPT = 64  # snapshot stories remembered (the same prompt and seed give the same story)


class TrainingView:
    """The tab's answers for one playground: which run it shows, what is new, and the snapshots' stories."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry, self.cache = registry, RunCache()
        self._stories: OrderedDict[tuple, str] = OrderedDict()

    def run_dir(self) -> Path:
        """The served checkpoint's own run (its folder, or the folder above it), else out/."""
        served = self.registry.served
        found = run_folder(served.directory) if served is not None else None
        return found or self.registry.default_dir.parent

    def serving(self) -> tuple[int | None, str]:
        served = self.registry.served
        if served is None:
            return None, ""
        step = served.info.get("metadata", {}).get("step")
        where = "the shipped model" if served.shipped else f"`{served.directory}`"
        follow = " It takes up each new checkpoint written there between stories." if served.reloader else ""
        unkept = (" Its own training records were not kept (it was trained before runs kept them); its loss curve "
                  "is in the model card." if served.shipped and run_folder(served.directory) is None else "")
        return step, f"The playground serves step {step} of {where}.{follow}{unkept}"

    def read(self) -> tuple[tuple, Run, int | None, str]:
        directory = self.run_dir()
        stamp, run = self.cache.read(directory)
        step, serving = self.serving()
        return (str(directory), stamp, step), run, step, serving

    def poll(self, seen: tuple | None) -> tuple:
        """(what was seen, status, curve, samples, snapshot steps): each part only when what it shows changed
        (a live run rewrites its progress every few seconds, its records once per evaluation), else a skip."""
        key, run, _, serving = self.read()
        directory, (metrics, _, history, exists, _), _ = key
        parts = (key, (directory, metrics, exists), (directory, history, exists))
        old = seen or (None, None, None)
        if parts[0] == old[0]:
            return (gr.skip(),) * 5
        steps = ", ".join(f"{s.step:,}" for s in run.snapshots)
        note = f"Snapshots at steps {steps}." if steps else "This run kept no snapshots (`train.py --snapshots N`)."
        records = (curve_frame(run), samples_html(run)) if parts[1] != old[1] else (gr.skip(), gr.skip())
        return parts, status_text(run, serving), *records, note if parts[2] != old[2] else gr.skip()

    def snapshot_story(self, step: int, prompt: str, params: SamplingParams) -> str:
        """The story the snapshot at `step` writes (on the server's compute thread; remembered)."""
        snapshot = snapshot_at(self.run_dir(), step)
        key = (str(snapshot.path), snapshot.path.stat().st_mtime_ns, prompt, params)
        if key not in self._stories:
            self._stories[key] = self.registry.compute.call(_write, snapshot.path, prompt, params)
            while len(self._stories) > STORIES_KEPT:
                self._stories.popitem(last=False)
        return self._stories[key]


def _write(path: Path, prompt: str, params: SamplingParams) -> str:
    model, _ = load_checkpoint(path)
    return prompt + "".join(t.text for t in generate(model, Tokenizer(), prompt, params))


def snapshot_params(seed: float | None, max_new_tokens: float | None) -> SamplingParams:
    try:
        return SamplingParams(seed=int(seed if seed is not None else 1), max_new_tokens=int(max_new_tokens or 60))
    except (TypeError, ValueError) as e:
        raise gr.Error(str(e), print_exception=False) from None


def training_tab(registry: ModelRegistry) -> tuple[gr.Timer, Callable[[], tuple], list]:
    """The tab's contents; returns its timer, what starts it (for the tab's select event) and what that updates."""
    view = TrainingView(registry)
    seen = gr.State(None)
    status = gr.Markdown(elem_id="run-status")
    curve = gr.LinePlot(x="step", y="loss", color="split", tooltip=["tokens seen (M)", "minutes"],
                        title="Loss (nats per token)", x_title="step", y_title="loss", height=320,
                        elem_id="run-curve")
    with gr.Accordion("How it learned: one beginning, written by each snapshot", open=True):
        note = gr.Markdown(elem_id="snapshot-note")
        with gr.Row(equal_height=True):
            prompt = gr.Textbox(value="Once upon a time", label="Story start", scale=3, elem_id="snapshot-prompt")
            seed = gr.Number(value=1, precision=0, label="Seed", scale=1)
            max_new = gr.Slider(10, 200, value=60, step=10, label="New tokens", scale=2)
            write = gr.Button("Write with each snapshot", variant="primary", scale=2, elem_id="snapshot-write")
        stories = gr.HTML(elem_id="snapshot-stories")
    gr.Markdown("### The sample story of each evaluation, newest first")
    samples = gr.HTML(elem_id="run-samples")
    timer = gr.Timer(POLL_S, active=False)
    outputs = [seen, status, curve, samples, note]
    timer.tick(view.poll, inputs=[seen], outputs=outputs, queue=False, api_visibility="private")

    def each_snapshot(text: str, seed_value: float | None, tokens: float | None):
        params, run = snapshot_params(seed_value, tokens), view.read()[1]
        if not run.snapshots:
            yield "<p>This run kept no snapshots: train with <code>--snapshots N</code>.</p>"
            return
        done = []
        for snapshot in run.snapshots:
            try:
                story = view.snapshot_story(snapshot.step, text or "", params)
            except (CheckpointError, OSError, ValueError) as e:  # removed or rewritten meanwhile
                story = f"(could not be read: {e})"
            done.append(f"<div class='snapshot-story'><b>Step {snapshot.step:,}</b><p>{html.escape(story)}</p></div>")
            yield "\n".join(done)

    write.click(each_snapshot, inputs=[prompt, seed, max_new], outputs=[stories], api_visibility="private")

    def training_run() -> dict:
        """The run the Training tab shows: state, progress, every evaluation with its sample, snapshot steps."""
        _, run, step, _ = view.read()
        return run_record(run, step)

    def snapshot_story(step: int, prompt: str = "Once upon a time", seed: int = 1, max_new_tokens: int = 60) -> str:
        """The story the run's snapshot at `step` writes from `prompt` with `seed` (the playground's settings)."""
        try:
            return view.snapshot_story(int(step), prompt or "", snapshot_params(seed, max_new_tokens))
        except (CheckpointError, ValueError) as e:
            raise gr.Error(str(e), print_exception=False) from None

    gr.api(training_run, api_name="training_run", concurrency_limit=None)
    gr.api(snapshot_story, api_name="snapshot_story")

    def start() -> tuple:
        return (gr.Timer(active=True), *view.poll(None))

    return timer, start, outputs
