"""The view inside the model, on the page and as the `inspect` API: for a clicked token of a finished story, which
earlier tokens each attention head looked at (shading over the window the model read, for a chosen layer and head
or their average) and the logit lens (the top tokens after each layer); and over the whole story, a strip
colouring each token by the first layer at which it became the top prediction. The numbers come from
tinygpt.inference.inspect, run on the compute thread with the model that wrote the story."""
from __future__ import annotations

import gradio as gr

from tinygpt.inference.inspect import MAX_IDS, SHARED_ROW, Inspection, first_top_layers, inspect
from tinygpt.inference.story import StorySnapshot
from tinygpt.playground.registry import ModelRegistry
from tinygpt.playground.views import SCROLL_TO, coloured_html
from tinygpt.serving.loading import LoadedModel

AVERAGE = "average of the heads"
TOP_ATTENDED = 5


def token_label(loaded: LoadedModel, token: int) -> str:
    if token == SHARED_ROW:
        c = loaded.model.config
        return f"(any of the {c.vocab_size - c.kept_tokens:,} tokens without a row of their own)"
    return repr(loaded.tokenizer.token_text(token))


def layer_names(n_layer: int) -> list[str]:
    return [f"layer {i + 1}" for i in range(n_layer)]


def head_weights(ins: Inspection, layer: int, head: str) -> list[float]:
    """The weights over the window at `layer` (0-based) for one head ("head 2") or AVERAGE."""
    weights = ins.attention[layer]
    return (weights.mean(0) if head == AVERAGE else weights[int(head.split()[-1]) - 1]).tolist()


def window_text(loaded: LoadedModel, ins: Inspection) -> list[str]:
    tok = loaded.tokenizer
    return [tok.token_text(t) or "◌" for t in ins.window]


def attention_shading(loaded: LoadedModel, ins: Inspection, layer: int, head: str) -> list[tuple[str, float]]:
    """(token text, shade) over the window, for gr.HighlightedText: each weight over the largest, so the most
    attended token is the darkest however spread the weights are (the table lists the weights themselves)."""
    weights = head_weights(ins, layer, head)
    top = max(weights) or 1.0
    return [(text, w / top) for text, w in zip(window_text(loaded, ins), weights)]


def attention_top(loaded: LoadedModel, ins: Inspection, layer: int, head: str) -> str:
    weights = head_weights(ins, layer, head)
    top = sorted(range(len(weights)), key=lambda i: -weights[i])[:TOP_ATTENDED]
    texts = window_text(loaded, ins)
    rows = "\n".join(f"| {i + ins.start + 1 if ins.start + i >= 0 else '—'} | `{texts[i]!r}` | {weights[i]:.1%} |"
                     for i in top)
    return (f"**Most attended** (layer {layer + 1}, {head}), from the query at `{texts[-1]!r}`\n\n"
            "| token # | token | weight |\n|---|---|---|\n" + rows)


def lens_table(loaded: LoadedModel, ins: Inspection) -> str:
    """One row per layer: the top tokens if the model stopped there, and the written token's rank and chance."""
    names = ["embedding", *(f"after block {i + 1}" for i in range(len(ins.lens) - 1))]
    written = token_label(loaded, ins.token)
    rows = [f"| {name} | " + ", ".join(f"{token_label(loaded, t)} {p:.0%}" for t, p in top)
            + f" | {rank + 1} · {p:.1%} |" for name, top, (rank, p) in zip(names, ins.lens, ins.lens_token)]
    return (f"**Logit lens**: the prediction after each layer (through the final LayerNorm and the head); "
            f"the token written was {written}\n\n| stopped after | top tokens | {written}: rank · probability |\n"
            "|---|---|---|\n" + "\n".join(rows))


def inspect_snapshot(registry: ModelRegistry, snap: StorySnapshot, piece: int) -> tuple[LoadedModel, Inspection]:
    """Inspect piece `piece` of a story on the page, with the model that wrote it."""
    loaded = registry.models.get(snap.source) or registry.served
    if loaded is None:
        raise ValueError("no model is loaded")
    ids = [*snap.prompt_ids, *snap.ids]
    return loaded, loaded.batcher.compute.call(inspect, loaded.model, ids, len(snap.prompt_ids) + piece,
                                               len(snap.prompt_ids))


def panel(registry: ModelRegistry, suffix: str, thinking: gr.HighlightedText, snapshot: gr.State) -> None:
    """The components under a story's shaded tokens, filled when a token is clicked."""
    state = gr.State(None)  # (model label, Inspection) of the clicked token
    # a class, not an id: Gradio writes a Group's elem_id on two nested elements
    with gr.Group(visible=False, elem_classes=["inside"]) as group:
        gr.Markdown("**Inside the model**: how it wrote the clicked token. Shading: how much the query that wrote "
                    "it attended to each earlier token it read.")
        with gr.Row():
            layer = gr.Dropdown(["layer 1"], value="layer 1", label="Layer", elem_id=f"inside-layer{suffix}")
            head = gr.Dropdown([AVERAGE], value=AVERAGE, label="Head", elem_id=f"inside-head{suffix}")
        shading = gr.HighlightedText(label="Attention (darkest = most attended)", show_legend=False, show_inline_category=False,
                                     elem_id=f"inside-attention{suffix}")
        top = gr.Markdown(elem_id=f"inside-top{suffix}")
        lens = gr.Markdown(elem_id=f"inside-lens{suffix}")

    def clicked(snap: StorySnapshot | None, evt: gr.SelectData) -> tuple:
        if snap is None:
            return (gr.update(visible=False), None, gr.update(), gr.update(), [], "", "")
        index = evt.index if isinstance(evt.index, int) else evt.index[0]
        loaded, ins = inspect_snapshot(registry, snap, index)
        c = loaded.model.config
        heads = [AVERAGE, *(f"head {h + 1}" for h in range(c.n_head))]
        last = c.n_layer - 1
        return (gr.update(visible=True), (snap.source, ins),
                gr.update(choices=layer_names(c.n_layer), value=f"layer {last + 1}"), gr.update(choices=heads, value=AVERAGE),
                attention_shading(loaded, ins, last, AVERAGE), attention_top(loaded, ins, last, AVERAGE),
                lens_table(loaded, ins))

    def redraw(kept: tuple | None, layer_name: str, head_name: str) -> tuple:
        if kept is None:
            return [], ""
        loaded, ins = registry.models.get(kept[0]) or registry.served, kept[1]
        layer_index = int(layer_name.split()[-1]) - 1
        return attention_shading(loaded, ins, layer_index, head_name), attention_top(loaded, ins, layer_index, head_name)

    shown = thinking.select(clicked, inputs=[snapshot], outputs=[group, state, layer, head, shading, top, lens],
                            api_visibility="private")
    # on a phone, into view once the panel is drawn (just shown, it has no position yet)
    shown.then(None, js=f"() => {{ setTimeout({SCROLL_TO.format(f'inside-layer{suffix}')}, 200); }}",
               api_visibility="private")
    for control in (layer, head):
        control.input(redraw, inputs=[state, layer, head], outputs=[shading, top], api_visibility="private")


def inspect_api(registry: ModelRegistry):
    def inspect_story(story: str | list[int], position: int, prompt_tokens: int = -1, model: str = "") -> dict:
        """How the model wrote token `position` of `story` (text, or a list of GPT-2 token ids): attention
        (layers x heads x the window's tokens) and the logit lens (layers x top tokens), as JSON. prompt_tokens:
        how many tokens were the prompt (-1: all before `position`); model: a label from the page (default: the
        served model)."""
        loaded = registry.models.get(model) if model else registry.served
        if loaded is None:
            raise gr.Error(f"model must be one of {registry.labels()}, got {model!r}" if model else
                           "no model is loaded", print_exception=False)
        try:
            if isinstance(story, str):
                if len(story) > 8 * MAX_IDS:
                    raise ValueError(f"the story is {len(story):,} characters; at most {8 * MAX_IDS:,} can be inspected")
                ids = loaded.tokenizer.encode(story)
            else:
                ids = story
            ins = loaded.batcher.compute.call(inspect, loaded.model, ids, position,
                                              None if prompt_tokens == -1 else prompt_tokens)
        except ValueError as e:  # bad input: one clear message, no server traceback
            raise gr.Error(str(e), print_exception=False) from None
        out = ins.to_json()
        out["window_text"] = window_text(loaded, ins)
        out["token_text"] = token_label(loaded, ins.token)
        return out

    return inspect_story


NEVER_TOP = "never the top"
STRIP_COLOURS = ("#60a5fa", "#93c5fd", "#bfdbfe", "#dbeafe", "#eff6ff", "#f8fafc")  # decided earlier: darker


def strip_names(n_layer: int) -> list[str]:
    return ["embedding", *(f"after layer {i + 1}" for i in range(n_layer))]


def layer_strip(registry: ModelRegistry, snap: StorySnapshot | None, on: bool) -> dict:
    """The story's pieces, each labelled with the first layer at which it was the top prediction."""
    if not on or snap is None or not snap.probs:
        return gr.update(visible=False)
    loaded = registry.models.get(snap.source) or registry.served
    if loaded is None:
        return gr.update(visible=False)
    names = strip_names(loaded.model.config.n_layer)
    written = [t for t in snap.ids if t != loaded.tokenizer.eot_id][:len(snap.probs)]  # the ids of the pieces
    layers = loaded.batcher.compute.call(first_top_layers, loaded.model, list(snap.prompt_ids), written,
                                         loaded.tokenizer.eot_id)
    colours = {**{name: STRIP_COLOURS[min(i, len(STRIP_COLOURS) - 1)] for i, name in enumerate(names)},
               NEVER_TOP: "#fca5a5"}
    pieces = [(text, colours[names[k] if k >= 0 else NEVER_TOP]) for (text, _), k in zip(snap.pieces, layers)]
    return gr.update(visible=True, value=coloured_html(pieces, colours))


def strip_panel(registry: ModelRegistry, snapshot: gr.State, thinking: gr.HighlightedText) -> None:
    """A toggle and the strip under the story's shaded tokens; redrawn when a story ends."""
    toggle = gr.Checkbox(False, label="Colour each token by the layer where it became the top prediction",
                         elem_id="show-layers")
    strip = gr.HTML(visible=False, elem_id="layer-strip")  # HTML: Gradio copies no API schema of it into sessions
    toggle.change(lambda snap, on: layer_strip(registry, snap, on), inputs=[snapshot, toggle], outputs=[strip],
                  api_visibility="private")
    # a story's end redraws it only when shown: an update would give the visitor's session its own copy of it
    thinking.change(lambda snap, on: layer_strip(registry, snap, on) if on else gr.skip(),
                    inputs=[snapshot, toggle], outputs=[strip], api_visibility="private")
