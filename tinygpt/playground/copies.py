"""What a story copied: on the page, a toggle that marks every span of at least MIN_TOKENS tokens found verbatim
in the training text (tinygpt.data.copy_index) and says what share of the story was copied; as the `copies`
API, the same as JSON."""
from __future__ import annotations

import gradio as gr

from tinygpt.data.copy_index import GRAM, MIN_TOKENS, CopyIndexError
from tinygpt.inference.inspect import MAX_IDS
from tinygpt.inference.story import StorySnapshot
from tinygpt.playground.registry import ModelRegistry
from tinygpt.playground.views import coloured_html
from tinygpt.serving.loading import LoadedModel

COPIED_COLOUR = "#fcd34d"  # amber: the copied spans


def copied_spans(loaded: LoadedModel, ids: list[int], written_from: int) -> dict:
    """The spans of `ids` found in the model's training text, and the share of the tokens from `written_from` on
    (what the model wrote, not the prompt) that lie in one. CopyIndexError when the model carries no index."""
    index = loaded.copy_index()
    spans = index.spans(ids)
    covered = set()
    for start, end in spans:
        covered.update(range(max(start, written_from), end))
    written = max(len(ids) - written_from, 0)
    tok = loaded.tokenizer
    return {"spans": [list(s) for s in spans], "texts": [tok.decode(ids[a:b]) for a, b in spans],
            "copied_share": len(covered) / written if written else 0.0, "tokens": written,
            "min_tokens": MIN_TOKENS, "window": GRAM, "false_positive_rate": index.info["false_positive_rate"]}


def summary(found: dict) -> str:
    n = len(found["spans"])
    return (f"**{found['copied_share']:.0%}** of the story's {found['tokens']} tokens lie in {n} span"
            f"{'' if n == 1 else 's'} of {found['min_tokens']}+ tokens found word for word in the training text"
            " (shorter runs are TinyStories' stock phrases, shared by stories no model wrote).")


def copies_view(registry: ModelRegistry, snap: StorySnapshot | None, on: bool) -> tuple:
    """(the story's pieces marked copied or not, the summary) for the page; hidden when off or without a story."""
    if not on or snap is None:
        return gr.update(visible=False), gr.update(visible=False)
    loaded = registry.models.get(snap.source) or registry.served
    if loaded is None:
        return gr.update(visible=False), gr.update(visible=True, value="No model is loaded.")
    ids, n = [*snap.prompt_ids, *snap.ids], len(snap.prompt_ids)
    try:
        found = copied_spans(loaded, ids, n)
    except CopyIndexError as e:
        return gr.update(visible=False), gr.update(visible=True, value=str(e))
    marked = set()
    for start, end in found["spans"]:
        marked.update(range(max(start - n, 0), end - n))
    pieces = [(text, COPIED_COLOUR if i in marked else "") for i, (text, _) in enumerate(snap.pieces)]
    return gr.update(visible=True, value=coloured_html(pieces)), gr.update(visible=True, value=summary(found))


def panel(registry: ModelRegistry, snapshot: gr.State, thinking: gr.HighlightedText) -> None:
    """The toggle and the marked story, under the shaded tokens; redrawn when a story ends."""
    toggle = gr.Checkbox(False, label="Mark what was copied from the training text", elem_id="show-copies")
    marked = gr.HTML(visible=False, elem_id="copies")  # HTML: Gradio copies no API schema of it into sessions
    said = gr.Markdown(visible=False, elem_id="copies-summary")
    toggle.change(lambda snap, on: copies_view(registry, snap, on), inputs=[snapshot, toggle],
                  outputs=[marked, said], api_visibility="private")
    # a story's end redraws it only when shown: an update would give the visitor's session its own copy of both
    thinking.change(lambda snap, on: copies_view(registry, snap, on) if on else (gr.skip(), gr.skip()),
                    inputs=[snapshot, toggle], outputs=[marked, said], api_visibility="private")


def copies_api(registry: ModelRegistry):
    def copies(story: str | list[int], prompt_tokens: int = 0, model: str = "") -> dict:
        """The spans of `story` (text, or a list of GPT-2 token ids) of at least min_tokens tokens found word for
        word in the training text of the model (a label from the page; default: the served model), as token
        ranges [start, end) and text, and the share of the tokens after the first `prompt_tokens` inside them."""
        loaded = registry.models.get(model) if model else registry.served
        if loaded is None:
            raise gr.Error(f"model must be one of {registry.labels()}, got {model!r}" if model else
                           "no model is loaded", print_exception=False)
        ids = loaded.tokenizer.encode(story) if isinstance(story, str) else story
        if not isinstance(ids, list) or not all(isinstance(t, int) and 0 <= t < 2**16 for t in ids):
            raise gr.Error("story must be text or a list of GPT-2 token ids", print_exception=False)
        if len(ids) > MAX_IDS:
            raise gr.Error(f"the story is {len(ids):,} tokens; at most {MAX_IDS:,}", print_exception=False)
        try:
            return copied_spans(loaded, ids, prompt_tokens)
        except CopyIndexError as e:
            raise gr.Error(str(e), print_exception=False) from None

    return copies
