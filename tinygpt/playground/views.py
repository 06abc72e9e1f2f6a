"""What the playground shows, as text: the model card, the stats line, the alternatives at a clicked token, and
turning the page's (or the API's) values into SamplingParams with one clear message for a bad one."""
from __future__ import annotations

import contextlib
import html
import math
from collections.abc import Iterator

import gradio as gr

from tinygpt.evaluation.quality import describe
from tinygpt.evaluation.story_loss import story_line
from tinygpt.inference.sampling import SamplingParams
from tinygpt.inference.story import TOP_ALTERNATIVES, StorySnapshot
from tinygpt.serving.batching import QueueFull, StoryFailed
from tinygpt.serving.loading import HOW_TO_GET_A_MODEL, LoadedModel

# On a phone the settings fill the screen: pressing Generate (or clicking a token) brings the story (or the view
# inside the model) up, so it is seen (only when less than 300 px of it would show: a page in sight stays still).
SCROLL_TO = ("() => {{ const el = document.getElementById('{}'); if (el && el.getBoundingClientRect().top > "
             "window.innerHeight - 300) el.scrollIntoView({{block: 'start'}}); }}")
TRAIN_YOUR_OWN = ("**Train a better one:** `python prepare_data.py` (TinyStories from the Hub, or `--train-files`), "
                  "then `python train.py --preset cpu --time-budget 60m` on a CPU, or `python train.py` (the 30M "
                  "reference model) on a GPU; reload this page and it serves `out/best`.")


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
    if story := next((meta[k] for k in ("shipped_story_loss", "story_loss_all") if meta.get(k)), None):
        rows.append(("story loss", f"{story_line(story)} nats/token, each validation story from its beginning"))
    if quality := meta.get("story_quality"):
        rows.append(("its stories", describe(quality)))
    if recipe := meta.get("recipe"):
        rows.append(("how it was trained", recipe))
    table = "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    return table + "\n\n" + TRAIN_YOUR_OWN


def stats_line(snap: StorySnapshot) -> str:
    """Tokens shown (<|endoftext|> is not shown, so not counted), speed, seed, and any notices."""
    line = f"**{len(snap.pieces)}** tokens · **{snap.tokens_per_sec:.1f}** tokens/s · seed {snap.seed}"
    return "  \n".join([line, *(f"ℹ️ {n}" for n in snap.notices)])


PART_OF_A_CHARACTER = "◌"  # a token whose bytes begin a character the next token completes: it has no text


def shown(text: str) -> str:
    """A piece as the shaded view shows it: every token gets a box to click, so a token with no text of its
    own, or only line breaks, gets a visible mark (the story itself keeps the real text)."""
    if not text:
        return PART_OF_A_CHARACTER
    if not text.strip() and "\n" in text:  # a line break alone renders as a box with no width
        return text.replace("\n", "↵\n")
    return text


def token_view(snap: StorySnapshot) -> tuple[list, tuple]:
    """(pieces for gr.HighlightedText, what a click needs: each piece with its alternatives and rank)."""
    return [(shown(text), prob) for text, prob in snap.pieces], tuple(zip(snap.pieces, snap.alternatives,
                                                                          snap.chosen_rank))


def show_tokens(snap: StorySnapshot | None) -> list:
    """The shaded tokens of a story. Sent once the story ends or is stopped, not with every update: Gradio
    builds and diffs an object per token for this view, which cost more than the model on 16 streams."""
    return token_view(snap)[0] if snap is not None else []


def coloured_html(pieces: list[tuple[str, str]], legend: dict[str, str] | None = None) -> str:
    """The story's pieces as HTML, each on its background colour ('' for none), under a legend (name: colour)."""
    keys = "".join(f'<span style="background:{c};padding:0 4px;margin-right:6px">{html.escape(n)}</span>'
                   for n, c in (legend or {}).items())
    body = "".join(f'<span style="background:{c}">{html.escape(t)}</span>' if c else html.escape(t)
                   for t, c in pieces)
    return (f"<div>{keys}</div>" if keys else "") + f'<div style="white-space:pre-wrap;line-height:1.7">{body}</div>'


def alternatives_table(view: tuple, i: int) -> str:
    """Markdown for the i-th generated token: the token picked (its probability and rank) and the top
    alternatives the model considered there, the picked one marked."""
    if not view or not 0 <= i < len(view):
        return ""
    (text, prob), alts, rank = view[i]
    where = f"rank {rank + 1} of the top {len(alts)}" if rank >= 0 else f"not in the top {TOP_ALTERNATIVES}"
    rows = [f"| {'**→**' if r == rank else ''} | `{a!r}` | {p:.1%} |" for r, (a, p) in enumerate(alts)]
    if rank < 0:
        rows.append(f"| **→** | `{text!r}` | {prob:.1%} |")
    return (f"**Token {i + 1}: `{text!r}`**, picked with probability {prob:.1%} ({where})\n\n"
            "| picked | token | probability |\n|---|---|---|\n" + "\n".join(rows))


def request_seed(seed: object) -> int | None:
    """The page's (or the API's) seed: None for random (empty or -1; the one drawn is shown), else an integer
    >= 0; ValueError otherwise."""
    if seed is None or seed == -1:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, float)) or not math.isfinite(seed) or seed < 0 \
            or seed != int(seed):
        raise ValueError(f"seed must be -1 (random) or an integer >= 0, got {seed!r}")
    return int(seed)


def request_params(temperature: object, top_k: object, top_p: object, max_new_tokens: object, seed: object,
                   min_p: object = None, repetition_penalty: object = None) -> SamplingParams:
    """The page's (or the API's) raw values as SamplingParams; ValueError naming the first bad one. min_p and
    repetition_penalty left out (None: an API call from before they existed) take their defaults."""
    extra = {k: v for k, v in (("min_p", min_p), ("repetition_penalty", repetition_penalty)) if v is not None}
    return SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens,
                          seed=request_seed(seed), **extra)


@contextlib.contextmanager
def said_on_the_page() -> Iterator[None]:
    """A busy playground (QueueFull), a failed step (StoryFailed, logged once by the batcher) or a bad request
    (ValueError) as one message on the visitor's page, and no traceback in the server's log."""
    try:
        yield
    except (QueueFull, StoryFailed, ValueError) as e:
        raise gr.Error(str(e), print_exception=False) from None
