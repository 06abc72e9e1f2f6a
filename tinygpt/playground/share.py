"""A story to keep or pass on: a link that opens the page with its prompt, settings, seed, model and branch
filled in and writes the very same story again (stories are seeded, and batching keeps them the same), and
the story as JSON (ids, tokens, probabilities, alternatives, settings, model) or as a self-contained HTML page
with the shading."""
from __future__ import annotations

import html
import json
from typing import AsyncIterator
from urllib.parse import urlencode

import gradio as gr

from tinygpt.inference.sampling import SamplingParams
from tinygpt.inference.story import StorySnapshot
from tinygpt.playground.registry import ModelRegistry
from tinygpt.playground.views import request_params, said_on_the_page, show_tokens, stats_line
from tinygpt.serving.stream import astream_branch, astream_story

# link parameter -> SamplingParams field
LINK_SETTINGS = {"t": "temperature", "k": "top_k", "p": "top_p", "n": "max_new_tokens", "seed": "seed",
                 "minp": "min_p", "rep": "repetition_penalty"}
MAX_LINK_IDS = 1024


def link_query(snap: StorySnapshot) -> str:
    """'?prompt=...&t=0.8&...&given=ids': what the page needs to write `snap` again."""
    params = snap.params or SamplingParams(seed=snap.seed)
    query = {"prompt": snap.text[:snap.start], **{k: getattr(params, f) for k, f in LINK_SETTINGS.items()},
             "model": snap.source}
    if snap.given:
        query["given"] = ",".join(map(str, snap.ids[:snap.given]))
    return "?" + urlencode(query)


def read_link(query: dict[str, str]) -> tuple[str, SamplingParams, str, list[int]] | None:
    """(prompt, settings, model label, given ids) from a link's query, None when it is not a story link;
    ValueError naming what is wrong in one that is."""
    if "prompt" not in query or "seed" not in query:
        return None
    values = {}
    for key, name in LINK_SETTINGS.items():
        if key in query:
            try:
                values[name] = float(query[key])
            except ValueError:
                raise ValueError(f"the link's {key}={query[key]!r} is not a number") from None
    for name in ("top_k", "max_new_tokens", "seed"):
        if name in values and values[name].is_integer():
            values[name] = int(values[name])
    params = request_params(*(values.get(n) for n in ("temperature", "top_k", "top_p", "max_new_tokens", "seed",
                                                      "min_p", "repetition_penalty")))
    try:
        given = [int(t) for t in query["given"].split(",")] if query.get("given") else []
    except ValueError:
        raise ValueError("the link's given tokens must be token ids separated by commas") from None
    if len(given) > MAX_LINK_IDS:
        raise ValueError(f"the link gives {len(given)} tokens; at most {MAX_LINK_IDS}")
    return query["prompt"], params, query.get("model", ""), given


def story_record(snap: StorySnapshot) -> dict:
    """The story as JSON: everything the page shows of it."""
    params = snap.params or SamplingParams(seed=snap.seed)
    pieces, alternatives = snap.pieces, snap.alternatives
    w = snap.width
    tokens = [{"id": snap.ids[i], "text": text, "prob": round(prob, 6),
               "alternatives": [{"id": a, "text": t, "prob": round(p, 6)}
                                for a, (t, p) in zip([a for a in snap.alt_ids[i * w:(i + 1) * w] if a >= 0],
                                                     alternatives[i])]}
              for i, (text, prob) in enumerate(pieces)]
    return {"model": snap.source, "prompt": snap.text[:snap.start], "text": snap.text,
            "settings": {f: getattr(params, f) for f in LINK_SETTINGS.values()}, "seed": snap.seed,
            "prompt_ids": list(snap.prompt_ids), "ids": list(snap.ids), "given": snap.given, "tokens": tokens,
            "link": link_query(snap)}


def story_page(snap: StorySnapshot) -> str:
    """A self-contained HTML page: the story, each token shaded by its probability, its alternatives on hover."""
    record = story_record(snap)

    def span(token: dict) -> str:
        considered = ", ".join(f"{a['text']!r} {a['prob']:.0%}" for a in token["alternatives"])
        return (f'<span title="{html.escape(considered)}" style="background: rgba(37, 99, 235, '
                f'{0.1 + 0.6 * token["prob"]:.2f})">{html.escape(token["text"])}</span>')

    spans = "".join(span(t) for t in record["tokens"])
    settings = ", ".join(f"{k} {v}" for k, v in record["settings"].items())
    return ("<!doctype html><html><head><meta charset='utf-8'><title>A TinyGPT story</title><style>"
            "body{font:18px/1.6 Georgia,serif;max-width:40em;margin:2em auto;padding:0 1em}"
            ".story{white-space:pre-wrap}small{color:#555}</style></head><body>"
            f"<h1>A TinyGPT story</h1><p class='story'><b>{html.escape(record['prompt'])}</b>{spans}</p>"
            f"<p><small>Model {html.escape(record['model'])}; {html.escape(settings)}. Darker: the model was "
            "surer of the token; hover for what else it considered.</small></p></body></html>\n")


def saved(snap: StorySnapshot | None, as_html: bool) -> str:
    """The story as the text of story.json or story.html, which the page downloads (no file on the server)."""
    if snap is None or not snap.probs:
        raise gr.Error("Write a story first.", print_exception=False)
    return story_page(snap) if as_html else json.dumps(story_record(snap), indent=1) + "\n"


# the browser saves the text it was sent as a file: no file on the server, and no File component, whose schema
# Gradio would copy into every visitor's session
DOWNLOAD = ("(text) => {{ if (!text) return; const a = document.createElement('a'); a.href = URL.createObjectURL("
            "new Blob([text], {{type: '{}'}})); a.download = '{}'; a.click(); }}")


def make_replay(registry: ModelRegistry, interval: float, rate: float):
    async def replay(link: tuple | None) -> AsyncIterator[tuple]:
        """The story of an opened link, written again (nothing when the page was opened without one)."""
        if link is None:
            return
        prompt, params, label, given = link
        loaded = registry.models.get(label) or registry.served
        if loaded is None:
            raise gr.Error("No model is loaded.", print_exception=False)
        source = label if label in registry.models else registry.labels()[0]
        stream = astream_branch(loaded.batcher, loaded.tokenizer, prompt, given[:-1], given[-1], params, interval,
                                rate, source) if given else \
            astream_story(loaded.batcher, loaded.tokenizer, prompt, params, interval, rate, source)
        with said_on_the_page():
            async for snap in stream:
                yield snap.text, stats_line(snap), snap

    return replay


def panel(registry: ModelRegistry, demo: gr.Blocks, inputs: list, outputs: list, interval: float,
          rate: float) -> None:
    """Share and Save under the story; a page opened from a link fills `inputs` (prompt, temperature, top-k,
    top-p, max new tokens, seed, min-p, repetition penalty) and writes the story into `outputs` (story, stats,
    snapshot, shaded tokens)."""
    snapshot, thinking = outputs[2], outputs[3]
    with gr.Row():
        share = gr.Button("Share link", size="sm", elem_id="share")
        save_json = gr.Button("Save as JSON", size="sm", elem_id="save-json")
        save_html = gr.Button("Save as HTML", size="sm", elem_id="save-html")
    url = gr.Textbox(label="A link to this very story", visible=False, buttons=["copy"], elem_id="share-url")
    payload = gr.Textbox(visible=False)  # what a Save sends the browser to download

    def query(snap: StorySnapshot | None) -> dict:
        if snap is None or not snap.probs:
            raise gr.Error("Write a story first.", print_exception=False)
        return gr.update(visible=True, value=link_query(snap))

    share.click(query, inputs=[snapshot], outputs=[url], queue=False, api_visibility="private").then(
        None, inputs=[url], outputs=[url], js="(q) => window.location.origin + window.location.pathname + q")
    for button, as_html, kind, name in ((save_json, False, "application/json", "story.json"),
                                        (save_html, True, "text/html", "story.html")):
        button.click(lambda snap, h=as_html: saved(snap, h), inputs=[snapshot], outputs=[payload],
                     api_visibility="private").then(None, inputs=[payload], js=DOWNLOAD.format(kind, name))
    link = gr.State(None)

    def opened(request: gr.Request) -> tuple:
        try:
            found = read_link(dict(request.query_params))
        except ValueError as e:
            gr.Warning(f"This link cannot be opened: {e}")
            found = None
        if found is None:
            return (*[gr.skip()] * len(inputs), None)
        prompt, p, _, _ = found
        return (prompt, p.temperature, p.top_k, p.top_p, p.max_new_tokens, p.seed, p.min_p, p.repetition_penalty,
                found)

    demo.load(opened, outputs=[*inputs, link], queue=False, api_visibility="private").then(
        make_replay(registry, interval, rate), inputs=[link], outputs=outputs[:3], show_progress="hidden",
        api_visibility="private").then(lambda found, snap: show_tokens(snap) if found else gr.skip(),
                                       inputs=[link, snapshot], outputs=[thinking], api_visibility="private")
