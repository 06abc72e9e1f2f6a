"""The Gradio story playground: prompt and sampling controls, the story streaming in token by token, "what the
model was thinking" (each token shaded by its probability, its alternatives on click), and a compare tab that
streams two stories at once from one prompt and seed, with two sets of settings or two models."""
from __future__ import annotations

import asyncio
from typing import AsyncIterator

import gradio as gr

from tinygpt.evaluation.quality import BEGINNINGS
from tinygpt.inference.sampling import SamplingParams, resolve_seed
from tinygpt.inference.story import StorySnapshot
from tinygpt.playground import branches, copies, inside, share
from tinygpt.playground.registry import ModelRegistry
from tinygpt.playground.training_tab import training_tab
from tinygpt.playground.views import (SCROLL_TO, alternatives_table, model_card, request_params, request_seed,
                                      said_on_the_page, show_tokens, stats_line, token_view)
from tinygpt.serving.loading import HOW_TO_GET_A_MODEL, LoadedModel
from tinygpt.serving.stream import astream_story

EXAMPLES = list(BEGINNINGS)  # the beginnings the story-quality report scores too
# Page updates: each takes CPU on Gradio's event loop that the model needs (bench/serve.py measures the cost).
UPDATE_INTERVAL_S = 1 / 10  # at most 10 a second per story still looks live
WARMING_POLL_S = 3  # how often an open page asks whether warming up has ended
UPDATES_PER_S = 60  # about this many a second over all stories: with many, each page updates less often
INTRO = ("# TinyGPT story playground\nA small GPT-2-style model trained on "
         "[TinyStories](https://huggingface.co/datasets/roneneldan/TinyStories). Type the start of a story and press "
         "**Generate**. Temperature 0 always picks the most likely token; higher is more surprising.")


def warming_text(registry: ModelRegistry) -> str:
    labels = registry.warming()
    if not labels:
        return ""
    return (f"⏳ **Warming up** ({', '.join(labels)}): stories are written now, at the plain speed, while the fast "
            "decode step is compiled in the background (about a minute on a first start; a seeded story may "
            "differ in a word once it takes over).")


def raw(component: gr.components.Component) -> gr.components.Component:
    """`component` with its value passed to our code as sent: a bad API value then gets SamplingParams' one-line
    message instead of Gradio's bounds check (and its traceback in the server log). Set on the instance: a
    subclass would make Gradio write a .pyi stub beside this module at import."""
    component.preprocess = lambda payload: payload
    return component


def checked_params(*values: object) -> SamplingParams:
    try:
        return request_params(*values)
    except ValueError as e:  # bad values sent through the API: one clear message, no server traceback
        raise gr.Error(str(e), print_exception=False) from None


async def story_stream(loaded: LoadedModel, prompt: str, params: SamplingParams, label: str = ""
                       ) -> AsyncIterator[StorySnapshot]:
    """Snapshots of one story through the model's batcher, at most 10 page updates a second, fewer when many
    stories run; a busy playground refuses with a message."""
    if not isinstance(prompt, str | None):  # the event takes its inputs as sent (preprocess=False in `wire`)
        raise gr.Error(f"prompt must be text, got {type(prompt).__name__}", print_exception=False)
    with said_on_the_page():
        async for snap in astream_story(loaded.batcher, loaded.tokenizer, prompt, params, UPDATE_INTERVAL_S,
                                        UPDATES_PER_S, label):
            yield snap


def make_generate(registry: ModelRegistry):
    async def generate_story(prompt: str, temperature: float, top_k: int, top_p: float, max_new_tokens: int,
                             seed: float | None, min_p: float | None = None, repetition_penalty: float | None = None
                             ) -> AsyncIterator[tuple]:
        params = checked_params(temperature, top_k, top_p, max_new_tokens, seed, min_p, repetition_penalty)
        loaded = registry.served
        if loaded is None:
            raise gr.Error("No model is loaded. " + HOW_TO_GET_A_MODEL.split("\n", 2)[-1], print_exception=False)
        async for snap in story_stream(loaded, prompt, params, registry.labels()[0]):
            yield snap.text, stats_line(snap), snap

    return generate_story


async def side_by_side(a: AsyncIterator[StorySnapshot], b: AsyncIterator[StorySnapshot]) -> AsyncIterator[tuple]:
    """Both streams advanced at once: (latest of a, latest of b) whenever either has news, once both have."""
    streams, latest = (a, b), [None, None]
    pending = {asyncio.ensure_future(anext(s)): i for i, s in enumerate(streams)}
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                i = pending.pop(future)
                try:
                    latest[i] = future.result()
                except StopAsyncIteration:
                    continue
                pending[asyncio.ensure_future(anext(streams[i]))] = i
            if None not in latest:
                yield tuple(latest)
    finally:  # stopped early: end both stories (their batch rows are freed)
        for future in pending:
            future.cancel()
        for stream in streams:
            await stream.aclose()


def make_compare(registry: ModelRegistry):
    async def compare(prompt: str, seed: float | None, max_new_tokens: int, model_a: str, temperature_a: float,
                      top_k_a: int, top_p_a: float, model_b: str, temperature_b: float, top_k_b: int,
                      top_p_b: float, min_p_a: float | None = None, repetition_penalty_a: float | None = None,
                      min_p_b: float | None = None, repetition_penalty_b: float | None = None
                      ) -> AsyncIterator[tuple]:
        try:
            seed = resolve_seed(request_seed(seed))  # one seed for both sides
        except ValueError as e:
            raise gr.Error(str(e), print_exception=False) from None
        sides = []
        for label, t, k, p, m, r in ((model_a, temperature_a, top_k_a, top_p_a, min_p_a, repetition_penalty_a),
                                     (model_b, temperature_b, top_k_b, top_p_b, min_p_b, repetition_penalty_b)):
            params = checked_params(t, k, p, max_new_tokens, seed, m, r)
            if label not in registry.models:
                raise gr.Error(f"model must be one of {registry.labels()}, got {label!r}", print_exception=False)
            sides.append((label, params))
        streams = (story_stream(registry.models[label], prompt, params, label) for label, params in sides)
        async for a, b in side_by_side(*streams):
            yield a.text, stats_line(a), a, b.text, stats_line(b), b

    return compare


def slider(name: str, suffix: str = "", **kwargs) -> gr.Slider:
    """A slider whose range, step and default are SamplingParams' own (so the page and the API agree)."""
    lim = SamplingParams.limits()[name]
    label = (f"{lim['label']} ({lim['info']})" if lim["info"] else lim["label"]) + suffix
    kwargs.setdefault("value", lim["default"])
    return raw(gr.Slider(*lim["range"], step=lim["step"], label=label, **kwargs))


def seed_box(**kwargs) -> gr.Number:
    return raw(gr.Number(value=-1, precision=0, label="Seed (-1 = random; the one used is shown below)", **kwargs))


def show_alternatives(snap: StorySnapshot | None, evt: gr.SelectData) -> str:
    """The clicked token, marked among the alternatives the model considered there."""
    if snap is None:
        return ""
    return alternatives_table(token_view(snap)[1], evt.index if isinstance(evt.index, int) else evt.index[0])


def token_panel(registry: ModelRegistry, suffix: str = "", tools=None) -> tuple:
    """The story, its stats, its latest snapshot (kept on the server), the shaded tokens, and at a clicked token
    the alternatives, `tools(story, stats, snapshot, thinking)` (more controls, built under them) and the view
    inside the model."""
    story = gr.Textbox(label="Story", lines=10, interactive=False, elem_id=f"story{suffix}")
    stats = gr.Markdown(elem_id=f"stats{suffix}")
    snapshot = gr.State(None)
    thinking = gr.HighlightedText(label="Token probabilities, once the story ends (darker = more confident; "
                                  "click one)", show_legend=False, show_inline_category=False,
                                  elem_id=f"thinking{suffix}")
    alternatives = gr.Markdown(elem_id=f"alternatives{suffix}")
    thinking.select(show_alternatives, inputs=[snapshot], outputs=[alternatives], api_visibility="private")
    if tools:
        tools(story, stats, snapshot, thinking)
    inside.panel(registry, suffix, thinking, snapshot)
    return story, stats, snapshot, thinking, alternatives


def run_buttons(label: str, suffix: str = "") -> tuple[gr.Button, gr.Button]:
    go = gr.Button(label, variant="primary", elem_id=f"generate{suffix}")
    stop = gr.Button("Stop", variant="stop", elem_id=f"stop{suffix}", interactive=False)  # active while a story runs
    return go, stop


def wire(go: gr.Button, stop: gr.Button, fn, inputs: list, outputs: list, api_name: str | None, views: list[tuple],
         also: list | None = None) -> list:
    """go (or Enter in `also`) runs fn streaming into outputs, bringing the first output into view on a narrow
    screen; Stop is active only meanwhile and cancels it. Either way, each (snapshot, thinking) pair in `views`
    then shows its shaded tokens. No concurrency limit here: each model's Batcher admits, batches, queues and
    refuses requests itself. Returns the events that run fn (api_name None: none is in the API)."""
    busy = (gr.update(interactive=False), gr.update(interactive=True))
    idle = (gr.update(interactive=True), gr.update(interactive=False))
    snapshots, thinking = [v[0] for v in views], [v[1] for v in views]

    def finish(*snaps: StorySnapshot | None) -> tuple:
        return (*idle, *map(show_tokens, snaps))

    runs = []
    for i, trigger in enumerate([go.click, *(also or [])]):
        started = trigger(lambda: busy, outputs=[go, stop], queue=False, api_visibility="private",
                          js=SCROLL_TO.format(outputs[0].elem_id))
        # preprocess/postprocess=False: the inputs come in as sent (the settings are checked by SamplingParams,
        # the prompt by story_stream) and the story (a Textbox) and stats (Markdown) go out as the strings fn
        # yields, which is what those components' processing would make of them; Gradio would otherwise hand
        # each input of each request and each update of each story to a worker thread and back
        run = started.then(fn, inputs=inputs, outputs=outputs, concurrency_limit=None, show_progress="hidden",
                           preprocess=False, postprocess=False,
                           **({"api_name": api_name} if i == 0 and api_name else {"api_visibility": "private"}))
        run.then(finish, inputs=snapshots, outputs=[go, stop, *thinking], queue=False, api_visibility="private")
        runs.append(run)
    stop.click(finish, inputs=snapshots, outputs=[go, stop, *thinking], cancels=runs, queue=False,
               api_visibility="private")
    return runs


def story_tab(registry: ModelRegistry, demo: gr.Blocks) -> gr.Button:
    with gr.Row():
        with gr.Column(scale=2):
            prompt = gr.Textbox(label="Story start", placeholder="Once upon a time...", lines=3, elem_id="prompt")
            with gr.Accordion("Sampling settings", open=True):
                shaping = [slider("temperature", elem_id="temperature"), slider("top_k"), slider("top_p")]
                later = [slider("min_p", elem_id="min-p"), slider("repetition_penalty", elem_id="penalty")]
                inputs = [prompt, *shaping, slider("max_new_tokens", elem_id="max-new"), seed_box(elem_id="seed"),
                          *later]  # the API's order: the two added last, so older calls keep working
            with gr.Row():
                go, stop = run_buttons("Generate")
            gr.Examples(EXAMPLES, inputs=[prompt], label="Try a beginning")
        with gr.Column(scale=3):
            def tools(*outputs: gr.components.Component) -> None:  # branching, and what the story copied
                branches.panel(registry, list(outputs), stop, [go.click, prompt.submit], wire, UPDATE_INTERVAL_S,
                               UPDATES_PER_S)
                copies.panel(registry, outputs[2], outputs[3])
                inside.strip_panel(registry, outputs[2], outputs[3])
                share.panel(registry, demo, inputs, list(outputs), UPDATE_INTERVAL_S, UPDATES_PER_S)

            story, stats, snapshot, thinking, _ = token_panel(registry, tools=tools)
    wire(go, stop, make_generate(registry), inputs, [story, stats, snapshot], "generate", [(snapshot, thinking)],
         also=[prompt.submit])
    return go


def compare_tab(registry: ModelRegistry) -> None:
    labels = registry.labels()
    gr.Markdown("One prompt and seed, two stories at once: two sets of settings, or two models"
                + ("." if len(labels) > 1 else " (start the app with `--compare PATH_OR_REPO` to offer more)."))
    prompt = gr.Textbox(label="Story start", value=EXAMPLES[0], lines=2, elem_id="compare-prompt")
    with gr.Row(equal_height=True):  # the shared settings and the buttons above both sides
        seed, max_new = seed_box(), slider("max_new_tokens", value=120, elem_id="compare-max-new")
        go, stop = run_buttons("Compare", "-compare")
    sides, later, panels, views = [], [], [], []
    with gr.Row():  # side by side on a wide screen; below 2 x 320 px the columns wrap, each story under its settings
        for side in ("a", "b"):
            with gr.Column(min_width=320, elem_id=f"side-{side}"):
                # the model and the rarer settings share a row, so on a desktop both stories and the buttons fit one
                # screen (tests/test_app.py); the settings open below their header
                with gr.Row(equal_height=True):
                    model = raw(gr.Dropdown(labels, value=labels[0] if labels else None,
                                            label=f"Model {side.upper()}", elem_id=f"model-{side}"))
                    with gr.Accordion("More settings", open=False, elem_id=f"more-{side}"):
                        later += [slider("min_p", elem_id=f"min-p-{side}"),
                                  slider("repetition_penalty", elem_id=f"penalty-{side}")]
                with gr.Row():
                    sides += [model, slider("temperature", elem_id=f"temperature-{side}",
                                            value=0.8 if side == "a" else 1.2), slider("top_k"), slider("top_p")]
                story, stats, snapshot, thinking, _ = token_panel(registry, f"-{side}")
                panels += [story, stats, snapshot]
                views.append((snapshot, thinking))
    wire(go, stop, make_compare(registry), [prompt, seed, max_new, *sides, *later], panels, "compare", views)


def build_demo(registry: ModelRegistry) -> gr.Blocks:
    """The whole page. With no model, it says how to get one; with a broken one, what is wrong with it."""
    with gr.Blocks(title="TinyGPT story playground") as demo:
        gr.Markdown(INTRO)
        problem = gr.Markdown(registry.problem or "", visible=registry.problem is not None, elem_id="problem")
        warming = gr.Markdown(warming_text(registry), visible=bool(registry.warming()), elem_id="warming")
        timer = gr.Timer(WARMING_POLL_S, active=bool(registry.warming()))  # ticks only while warming up
        with gr.Tab("Story") as story:
            go = story_tab(registry, demo)
        with gr.Tab("Compare") as compare:
            compare_tab(registry)
        with gr.Tab("Training", elem_id="training-tab") as training:
            run_timer, follow_run, run_outputs = training_tab(registry)
        # the Training tab asks for news only while it is open
        training.select(follow_run, outputs=[run_timer, *run_outputs], queue=False, api_visibility="private")
        for other in (story, compare):
            other.select(lambda: gr.Timer(active=False), outputs=[run_timer], queue=False, api_visibility="private")
        with gr.Accordion("Model card", open=registry.served is None):
            card = gr.Markdown(model_card(registry.served), elem_id="model-card")
            served = registry.served
            if served is not None and served.loss_png:
                gr.Image(str(served.loss_png), label="Loss curve", show_label=True, interactive=False)

        def on_load() -> tuple:
            registry.refresh()  # a model trained since start-up is served from this visit on
            return (gr.update(value=registry.problem or "", visible=registry.problem is not None),
                    model_card(registry.served), gr.update(interactive=registry.served is not None))

        def warming_state() -> tuple:
            busy = bool(registry.warming())
            return gr.update(value=warming_text(registry), visible=busy), gr.Timer(active=busy)

        demo.load(on_load, outputs=[problem, card, go], queue=False, api_visibility="private")
        gr.api(inside.inspect_api(registry), api_name="inspect", concurrency_limit=None)
        gr.api(branches.branch_api(registry), api_name="branch", concurrency_limit=None)
        gr.api(copies.copies_api(registry), api_name="copies", concurrency_limit=None)
        demo.load(warming_state, outputs=[warming, timer], queue=False, api_visibility="private")
        timer.tick(warming_state, outputs=[warming, timer], queue=False, api_visibility="private")
    demo.queue(default_concurrency_limit=None)
    return demo
