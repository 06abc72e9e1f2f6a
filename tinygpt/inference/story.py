"""Stories as text: the engine's token ids turned into UTF-8-safe text pieces, and one playground request as a
stream of immutable snapshots (the text so far, each piece with its probability and alternatives, the stats
and any notices), which a UI can render or keep without copying."""
from __future__ import annotations

import dataclasses
import secrets
import time
import unicodedata
from dataclasses import dataclass
from typing import Iterator

from tinygpt.data.tokenizer import Tokenizer
from tinygpt.inference.engine import Engine
from tinygpt.inference.sampling import SamplingParams
from tinygpt.model.gpt import GPT

TOP_ALTERNATIVES = 5


@dataclass(frozen=True)
class GeneratedToken:
    """One sampled token: its id, the text it completes ('' while a UTF-8 character is unfinished), the model's
    probability for it (temperature 1, before top-k/top-p) and the top alternatives as (id, text, prob)."""

    id: int
    text: str
    prob: float
    alternatives: tuple[tuple[int, str, float], ...] = ()


def generate(model: GPT | Engine, tokenizer: Tokenizer, prompt: str | list[int],
             params: SamplingParams | None = None, **settings) -> Iterator[GeneratedToken]:
    """Yield each new token with its text. `params`, or SamplingParams fields as keywords
    (`generate(model, tok, "Once", temperature=0, max_new_tokens=20)`). An empty prompt starts from
    <|endoftext|>; a prompt longer than the context keeps its last block_size tokens."""
    params = params or SamplingParams(**settings)
    engine = model if isinstance(model, Engine) else Engine(model, eot_id=tokenizer.eot_id)
    ids = tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
    text = tokenizer.stream_decoder()
    for i, token in enumerate(engine.generate(ids, params)):
        is_eot = token.id == tokenizer.eot_id
        piece = text.flush() if is_eot else text.push(token.id)
        if i == params.max_new_tokens - 1 and not is_eot:
            piece += text.flush()
        alts = tuple((a, tokenizer.decode([a]), p) for a, p in token.alternatives)
        yield GeneratedToken(token.id, piece, token.prob, alts)


@dataclass(frozen=True)
class StorySnapshot:
    """What the page shows after each token. Immutable: each token gives a new snapshot sharing the old text."""

    text: str  # the prompt and everything generated so far
    pieces: tuple[tuple[str, float], ...] = ()  # generated text pieces and their probability
    alternatives: tuple[tuple[tuple[str, float], ...], ...] = ()  # top candidates at each piece, best first
    chosen_rank: tuple[int, ...] = ()  # each piece's rank among its alternatives (0 = the top; -1 = below them)
    n_tokens: int = 0  # tokens generated, <|endoftext|> included
    tokens_per_sec: float = 0.0
    seed: int = 0
    notices: tuple[str, ...] = ()


def clean_prompt(text: str | None) -> str:
    """Drop control characters (keeping newlines and tabs) that the tokenizer would turn into noise."""
    text = (text or "").replace("\r\n", "\n").replace("\r", "\n")
    return "".join(c for c in text if c in "\n\t" or unicodedata.category(c)[0] != "C")


def prompt_notices(n_ids: int, block_size: int) -> tuple[str, ...]:
    if not n_ids:
        return ("Empty prompt: the model starts a story from scratch.",)
    if n_ids > block_size:
        return (f"The prompt is {n_ids} tokens; the model reads only its last {block_size}.",)
    return ()


def stream_story(engine: Engine, tokenizer: Tokenizer, prompt: str | None, params: SamplingParams
                 ) -> Iterator[StorySnapshot]:
    """Yield a StorySnapshot after every sampled token. A params.seed of None draws one (shown to the user)."""
    prompt = clean_prompt(prompt)
    seed = secrets.randbelow(2**31) if params.seed is None else params.seed
    params = dataclasses.replace(params, seed=seed, alternatives=max(params.alternatives, TOP_ALTERNATIVES))
    ids = tokenizer.encode(prompt)
    snap = StorySnapshot(text=prompt, seed=seed, notices=prompt_notices(len(ids), engine.block_size))
    start = time.perf_counter()
    for token in generate(engine, tokenizer, ids, params):
        n = snap.n_tokens + 1
        stats = dict(n_tokens=n, tokens_per_sec=n / max(time.perf_counter() - start, 1e-9))
        if token.id == tokenizer.eot_id:
            snap = dataclasses.replace(snap, notices=snap.notices + ("The model ended the story (<|endoftext|>).",),
                                       **stats)
        else:
            alts = tuple((text, prob) for _, text, prob in token.alternatives)
            rank = next((r for r, (a, _, _) in enumerate(token.alternatives) if a == token.id), -1)
            snap = dataclasses.replace(snap, text=snap.text + token.text,
                                       pieces=snap.pieces + ((token.text, token.prob),),
                                       alternatives=snap.alternatives + (alts,),
                                       chosen_rank=snap.chosen_rank + (rank,), **stats)
        yield snap
