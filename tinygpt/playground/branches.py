"""Branching on the page and the `branch` API: at a clicked token, go on with one of the model's alternatives
or a word of your own. The story becomes a tree: each branch is listed with where it leaves its parent, and any
branch can be reopened and branched again. The writing is tinygpt.serving.stream.astream_branch's."""
from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator

import gradio as gr

from tinygpt.data.tokenizer import Tokenizer
from tinygpt.inference.story import StorySnapshot
from tinygpt.playground.registry import ModelRegistry
from tinygpt.playground.views import request_params, said_on_the_page, show_tokens, stats_line
from tinygpt.serving.loading import LoadedModel
from tinygpt.serving.stream import astream_branch

MAX_BRANCHES = 12  # per tree: each keeps its story on the server while the page is open


@dataclass(frozen=True)
class Node:
    """One story of the tree: the first (parent -1), or a branch of tree[parent] at its piece `at`."""

    snap: StorySnapshot
    parent: int = -1
    at: int = -1
    word: str = ""  # the token (or typed words) put at `at`


def node_label(tree: list[Node], i: int) -> str:
    node = tree[i]
    if node.parent < 0:
        return "1 · the story"
    return f"{i + 1} · from {node.parent + 1} at token {node.at + 1}: {node.word!r}"


def grown(tree: list[Node] | None, parent: StorySnapshot, at: int, word: str, snap: StorySnapshot) -> list[Node]:
    """`tree` (None: a new one rooted at `parent`) with `snap`, a branch of `parent` at piece `at`, added."""
    tree = list(tree or [])
    index = next((i for i, node in enumerate(tree) if node.snap is parent), None)
    if index is None:  # the parent is a story written since the tree began: it roots a new tree
        tree, index = [Node(parent)], 0
    return [*tree, Node(snap, index, at, word)]


def branch_point(snap: StorySnapshot, piece: int, choice: str | None, typed: str | None, tokenizer: Tokenizer
                 ) -> tuple[list[int], int, str]:
    """(kept ids, chosen id, the word as shown) to branch `snap` at `piece`: with the words typed (their tokens
    but the last are kept too; a space is put before them where the replaced token had one) or else the
    alternative `choice` (a token id). ValueError says what to do."""
    if not 0 <= piece < len(snap.probs):
        raise ValueError(f"piece must be a token of the story (0 to {len(snap.probs) - 1}), got {piece}")
    kept = list(snap.ids[:piece])
    if typed and typed.strip():
        written = snap.pieces[piece][0]
        text = typed if typed[0].isspace() or not written.startswith(" ") else " " + typed
        ids = tokenizer.encode(text)
        return kept + ids[:-1], ids[-1], text
    if choice in (None, ""):
        raise ValueError("Choose one of the model's alternatives, or type a word, then press Write from here.")
    return kept, int(choice), tokenizer.token_text(int(choice))


async def branch_stream(loaded: LoadedModel, snap: StorySnapshot, kept: list[int], chosen: int,
                        interval: float, rate: float) -> AsyncIterator[StorySnapshot]:
    """The branch's snapshots, a bad request or a busy playground as one clear message on the page."""
    with said_on_the_page():
        async for new in astream_branch(loaded.batcher, loaded.tokenizer, snap.text[:snap.start], kept, chosen,
                                        snap.params, interval, rate, snap.source):
            yield new


def model_for(registry: ModelRegistry, label: str) -> LoadedModel:
    loaded = registry.models.get(label) if label else registry.served
    if loaded is None:
        raise gr.Error(f"model must be one of {registry.labels()}, got {label!r}" if label else
                       "no model is loaded", print_exception=False)
    return loaded


def make_write_branch(registry: ModelRegistry, interval: float, rate: float):
    async def write_branch(picked: tuple | None, choice: str | None, typed: str | None, tree: list[Node] | None
                           ) -> AsyncIterator[tuple]:
        if picked is None:
            raise gr.Error("Click a token of a finished story first.", print_exception=False)
        if tree and len(tree) >= MAX_BRANCHES:
            raise gr.Error(f"This story has {MAX_BRANCHES} branches, as many as a page keeps: press Generate for a "
                           "new story to branch.", print_exception=False)
        snap, piece = picked
        loaded = model_for(registry, snap.source)
        try:
            kept, chosen, _ = branch_point(snap, piece, choice, typed, loaded.tokenizer)
        except ValueError as e:
            raise gr.Error(str(e), print_exception=False) from None
        async for new in branch_stream(loaded, snap, kept, chosen, interval, rate):
            yield new.text, stats_line(new), new

    return write_branch


def branch_api(registry: ModelRegistry):
    async def branch(prompt: str, ids: list[int], chosen: int, temperature: float = 0.8, top_k: int = 50,
                     top_p: float = 0.95, max_new_tokens: int = 200, seed: int = -1, min_p: float | None = None,
                     repetition_penalty: float | None = None, model: str = "") -> dict:
        """The story after `prompt` whose generated tokens begin with `ids` (the first p of a story), then the
        token `chosen` at p, then what the model writes with these settings (max_new_tokens counts all of
        them; the same seed and settings as the story give its siblings). Returns its text, prompt ids, ids,
        probabilities and seed."""
        loaded = model_for(registry, model)
        with said_on_the_page():
            params = request_params(temperature, top_k, top_p, max_new_tokens, seed, min_p, repetition_penalty)
            last = None
            async for last in astream_branch(loaded.batcher, loaded.tokenizer, prompt, ids, chosen, params,
                                             source=model or registry.labels()[0]):
                pass
        return {"text": last.text, "prompt_ids": list(last.prompt_ids), "ids": list(last.ids),
                "probs": list(last.probs), "seed": last.seed, "branch_at": len(ids)}

    return branch


def offer(snap: StorySnapshot | None, evt: gr.SelectData) -> tuple:
    """At a clicked token: the alternatives to go on with (the written one left out), and what was clicked."""
    if snap is None or snap.params is None:
        return gr.update(visible=False), None, gr.update(), ""
    piece = evt.index if isinstance(evt.index, int) else evt.index[0]
    w = snap.width
    alts = [(f"{snap.token_text(a)!r} {p:.0%}", str(a)) for a, p in zip(snap.alt_ids[piece * w:][:w],
                                                                       snap.alt_probs[piece * w:][:w])
            if a >= 0 and a != snap.ids[piece]]
    return gr.update(visible=True), (snap, piece), gr.update(choices=alts, value=None,
                                                             label=f"Go on from token {piece + 1} with"), ""


def tree_update(tree: list[Node] | None, current: int) -> dict:
    if not tree:
        return gr.update(visible=False, choices=[], value=None)
    return gr.update(visible=True, choices=[(node_label(tree, i), i) for i in range(len(tree))], value=current)


def panel(registry: ModelRegistry, outputs: list, stop: gr.Button, resets: list, wire, interval: float,
          rate: float) -> None:
    """The branching controls under a story's shaded tokens. `outputs`: (story, stats, snapshot, thinking); `stop`
    cancels a branch being written; `resets`: the triggers of a new story (they hide the controls); `wire` runs
    a story-writing event as the page's Generate does (ui.wire)."""
    story, stats, snapshot, thinking = outputs
    picked, tree = gr.State(None), gr.State(None)  # (snapshot, piece) clicked; the branches written from it
    with gr.Group(visible=False, elem_classes=["branching"]) as group:  # a Group writes an id twice
        choice = gr.Radio([], label="Go on with", elem_id="branch-choice")
        with gr.Row(equal_height=True):
            typed = gr.Textbox(label="or your own word", max_lines=1, scale=2, elem_id="branch-word")
            go = gr.Button("Write from here", scale=1, elem_id="branch")
    branches = gr.Radio([], label="Branches of this story (choose one to reopen it)", visible=False,
                        elem_id="branches")
    thinking.select(offer, inputs=[snapshot], outputs=[group, picked, choice, typed], api_visibility="private")
    for trigger in resets:
        trigger(lambda: (gr.update(visible=False), None), outputs=[group, picked], queue=False,
                api_visibility="private")

    def add(kept: list[Node] | None, click: tuple | None, snap: StorySnapshot | None) -> tuple:
        if click is None or snap is None or snap is click[0]:  # no branch was written (refused, or failed)
            return gr.skip(), gr.skip()
        word = snap.pieces[click[1]][0] if click[1] < len(snap.pieces) else ""
        new = grown(kept, click[0], click[1], word, snap)
        return new, tree_update(new, len(new) - 1)

    def reopen(kept: list[Node] | None, i: int | None) -> tuple:
        if not kept or i is None or not 0 <= i < len(kept):
            return gr.update(), gr.update(), gr.update(), gr.update(), gr.update(visible=False)
        snap = kept[i].snap
        return snap.text, stats_line(snap), snap, show_tokens(snap), gr.update(visible=False)

    runs = wire(go, stop, make_write_branch(registry, interval, rate), [picked, choice, typed, tree],
                [story, stats, snapshot], None, [(snapshot, thinking)])
    for run in runs:
        run.then(add, inputs=[tree, picked, snapshot], outputs=[tree, branches], api_visibility="private")
    branches.input(reopen, inputs=[tree, branches], outputs=[story, stats, snapshot, thinking, group],
                   api_visibility="private")
