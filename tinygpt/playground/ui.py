"""The Gradio story playground: prompt and sampling controls, the story streaming in token by token,
and "what the model was thinking": each token shaded by its probability, its alternatives on click."""
from __future__ import annotations

import logging
import time
from typing import Iterator

import gradio as gr

from tinygpt.inference.sampling import SamplingParams
from tinygpt.playground.serving import HOW_TO_GET_A_MODEL, LoadedModel
from tinygpt.inference.story import StorySnapshot, stream_story

log = logging.getLogger(__name__)

EXAMPLES = ["Once upon a time, there was a little girl named Lily.", "Tom and his dog went to the park.",
            "One day, a small bird found a shiny key.", "The sun was hot, so Mia wanted ice cream.",
            "Ben had a red ball. He"]
UPDATE_INTERVAL_S = 1 / 30
INTRO = ("# TinyGPT story playground\nA small GPT-2-style model trained on "
         "[TinyStories](https://huggingface.co/datasets/roneneldan/TinyStories). Type the start of a story and press "
         "**Generate**. Temperature 0 always picks the most likely token; higher is more surprising.")


TRAIN_YOUR_OWN = ("**Train a better one:** `python prepare_data.py` (TinyStories from the Hub, or `--train-files`), "
                  "then `python train.py --preset cpu --time-budget 60m` on a CPU, or `python train.py` (the 30M "
                  "reference model) on a GPU; restart the app and it serves `out/best`.")


def model_card(loaded: LoadedModel | None) -> str:
    if loaded is None:
        return HOW_TO_GET_A_MODEL
    c, meta = loaded.model.config, loaded.info.get("metadata", {})
    tokens = meta.get("tokens_seen")
    val = next((meta[k] for k in ("shipped_val_loss", "val_loss_all", "val_loss") if meta.get(k) is not None), None)
    vocab = f", {c.kept_tokens:,} token ids of its own (the rest share one)" if c.kept_tokens else ""
    rows = [("model", "the one that ships with TinyGPT" if loaded.shipped else f"`{loaded.source}`"),
            ("parameters", f"{loaded.num_params / 1e6:.1f}M"), ("serving precision", loaded.precision),
            ("shape", f"{c.n_layer} layers, {c.n_head} heads, {c.n_embd} wide, context {c.block_size} tokens{vocab}"),
            ("training tokens", f"{tokens / 1e6:,.1f}M" if tokens else "unknown"),
            ("validation loss", f"{val:.3f} nats/token" if val is not None else "unknown"), ("step", meta.get("step", "?"))]
    if recipe := meta.get("recipe"):
        rows.append(("how it was trained", recipe))
    table = "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    return table + "\n\n" + TRAIN_YOUR_OWN


def stats_line(update: StorySnapshot) -> str:
    line = f"**{update.n_tokens}** tokens · **{update.tokens_per_sec:.1f}** tokens/s · seed {update.seed}"
    return "  \n".join([line, *(f"ℹ️ {n}" for n in update.notices)])


def request_params(temperature: float, top_k: int, top_p: float, max_new_tokens: int,
                   seed: float | None) -> SamplingParams:
    """The page's (or the API's) values as SamplingParams; ValueError with the reason when one is not valid."""
    if seed is None or seed == -1:
        seed = None  # random, and the one drawn is shown
    elif not isinstance(seed, (int, float)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be -1 (random) or an integer >= 0, got {seed!r}")
    return SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens,
                          seed=seed)


def make_generate(loaded: LoadedModel | None):
    def generate_story(prompt: str, temperature: float, top_k: int, top_p: float, max_new_tokens: int,
                       seed: float | None) -> Iterator[tuple]:
        if loaded is None:
            raise gr.Error("No model is loaded. " + HOW_TO_GET_A_MODEL.split("\n", 2)[-1], print_exception=False)
        try:
            params = request_params(temperature, top_k, top_p, max_new_tokens, seed)
        except ValueError as e:  # out-of-range settings sent through the API
            raise gr.Error(str(e), print_exception=False) from None
        now = last = 0.0
        snap = None
        for snap in stream_story(loaded.engine, loaded.tokenizer, prompt, params):
            now = time.perf_counter()  # at most ~30 page updates a second: looks live, leaves the CPU to the model
            if now - last >= UPDATE_INTERVAL_S:
                last = now
                yield snap.text, stats_line(snap), list(snap.pieces), snap.alternatives
        if snap is not None and now != last:  # the final state, if it was held back
            yield snap.text, stats_line(snap), list(snap.pieces), snap.alternatives

    return generate_story


def show_alternatives(alternatives: list, evt: gr.SelectData) -> dict:
    """The top candidates at the clicked token's position."""
    i = evt.index if isinstance(evt.index, int) else evt.index[0]
    if not alternatives or i >= len(alternatives):
        return {}
    return {repr(text): prob for text, prob in alternatives[i]}


def slider(name: str, **kwargs) -> gr.Slider:
    """A slider whose range, step and default are SamplingParams' own (so the page and the API agree)."""
    lim = SamplingParams.limits()[name]
    label = f"{lim['label']} ({lim['info']})" if lim["info"] else lim["label"]
    return gr.Slider(*lim["range"], value=lim["default"], step=lim["step"], label=label, **kwargs)


def controls() -> list:
    prompt = gr.Textbox(label="Story start", placeholder="Once upon a time...", lines=3, elem_id="prompt")
    with gr.Accordion("Sampling settings", open=True):
        temperature = slider("temperature", elem_id="temperature")
        top_k = slider("top_k")
        top_p = slider("top_p")
        max_new = slider("max_new_tokens", elem_id="max-new")
        seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random; the one used is shown below)")
    return [prompt, temperature, top_k, top_p, max_new, seed]


def output_column(loaded: LoadedModel | None) -> tuple:
    """The story, its stats, the token-probability view with alternatives, and the model card."""
    story = gr.Textbox(label="Story", lines=12, interactive=False, elem_id="story")
    stats = gr.Markdown(elem_id="stats")
    with gr.Accordion("What the model was thinking", open=True):
        gr.Markdown("Each generated token is shaded by the probability the model gave it (darker = more "
                    "confident). Click a token to see the alternatives it considered there.")
        thinking = gr.HighlightedText(label="Token probabilities", show_legend=False,
                                      show_inline_category=False, elem_id="thinking")
        alternatives = gr.Label(label="Alternatives at the clicked token", num_top_classes=5,
                                elem_id="alternatives")
    with gr.Accordion("Model card", open=loaded is None):
        gr.Markdown(model_card(loaded))
        if loaded is not None and loaded.loss_png:
            gr.Image(str(loaded.loss_png), label="Loss curve", show_label=True, interactive=False)
    return story, stats, thinking, alternatives


def build_demo(loaded: LoadedModel | None, concurrency: int = 4, max_queue: int = 64) -> gr.Blocks:
    """The whole page; `loaded` None shows how to get a model instead of failing. `concurrency` stories are
    generated at once; `max_queue` more requests wait."""
    with gr.Blocks(title="TinyGPT story playground") as demo:
        gr.Markdown(INTRO)
        if loaded is None:
            gr.Markdown(HOW_TO_GET_A_MODEL, elem_id="no-model")
        with gr.Row():
            with gr.Column(scale=2):
                inputs = controls()
                with gr.Row():
                    go = gr.Button("Generate", variant="primary", elem_id="generate", interactive=loaded is not None)
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
                    clear = gr.Button("Clear", elem_id="clear")
                gr.Examples(EXAMPLES, inputs=[inputs[0]], label="Try a beginning")
            with gr.Column(scale=3):
                story, stats, thinking, alternatives = output_column(loaded)
        alts = gr.State([])
        outputs = [story, stats, thinking, alts]
        fn = make_generate(loaded)
        common = dict(fn=fn, inputs=inputs, outputs=outputs, concurrency_limit=concurrency,
                      concurrency_id="generate", show_progress="hidden")
        click = go.click(api_name="generate", **common)
        enter = inputs[0].submit(api_visibility="private", **common)
        stop.click(None, cancels=[click, enter], api_visibility="private")
        clear.click(lambda: ("", "", "", [], [], None), outputs=[inputs[0], story, stats, thinking, alts, alternatives],
                    api_visibility="private")
        thinking.select(show_alternatives, inputs=[alts], outputs=[alternatives], api_visibility="private")
    demo.queue(max_size=max_queue, default_concurrency_limit=concurrency)
    return demo
