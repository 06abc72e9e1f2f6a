"""Stories as text: the engine's token ids turned into UTF-8-safe text pieces, and one playground request as a
stream of immutable snapshots (the text so far, each piece with its probability and alternatives, the stats
and any notices), which a UI can render or keep without copying. Snapshots come from an Engine (one stream,
blocking) or a Batcher (many streams; `astream_story` for asyncio servers)."""
from __future__ import annotations

import dataclasses
import time
import unicodedata
from dataclasses import dataclass
from typing import AsyncIterator, Iterable, Iterator

from tinygpt.data.tokenizer import Tokenizer
from tinygpt.inference.batching import Batcher
from tinygpt.inference.engine import Engine, SampledToken
from tinygpt.inference.sampling import SamplingParams, resolve_seed
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


class Detokenizer:
    """One stream's SampledTokens as GeneratedTokens: UTF-8-safe text pieces (a character split across tokens
    appears whole, with the token that completes it) and the alternatives as text."""

    def __init__(self, tokenizer: Tokenizer, params: SamplingParams) -> None:
        self.tokenizer, self.max_new_tokens = tokenizer, params.max_new_tokens
        self.text, self.n = tokenizer.stream_decoder(), 0

    def add(self, token: SampledToken) -> GeneratedToken:
        self.n += 1
        is_eot = token.id == self.tokenizer.eot_id
        piece = self.text.flush() if is_eot else self.text.push(token.id)
        if self.n == self.max_new_tokens and not is_eot:
            piece += self.text.flush()
        alts = tuple((a, self.tokenizer.token_text(a), p) for a, p in token.alternatives)
        return GeneratedToken(token.id, piece, token.prob, alts)


def generate(model: GPT | Engine, tokenizer: Tokenizer, prompt: str | list[int],
             params: SamplingParams | None = None, **settings) -> Iterator[GeneratedToken]:
    """Yield each new token with its text. `params`, or SamplingParams fields as keywords
    (`generate(model, tok, "Once", temperature=0, max_new_tokens=20)`). An empty prompt starts from
    <|endoftext|>; a prompt longer than the context keeps its last block_size tokens."""
    params = params or SamplingParams(**settings)
    engine = model if isinstance(model, Engine) else Engine(model, eot_id=tokenizer.eot_id)
    ids = tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
    text = Detokenizer(tokenizer, params)
    for token in engine.generate(ids, params):
        yield text.add(token)


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
    prompt_ids: tuple[int, ...] = ()  # the prompt as tokens
    ids: tuple[int, ...] = ()  # the tokens generated, <|endoftext|> included: piece i is ids[i]
    source: str = ""  # which model wrote it (a label the caller chose)


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


class StoryBuilder:
    """One playground request: its cleaned prompt, its seed (drawn if not given, and shown) and its token ids;
    `add` turns the tokens generated next into the next snapshot."""

    def __init__(self, tokenizer: Tokenizer, prompt: str | None, params: SamplingParams, block_size: int,
                 source: str = "") -> None:
        prompt = clean_prompt(prompt)
        seed = resolve_seed(params.seed)
        self.params = dataclasses.replace(params, seed=seed, alternatives=max(params.alternatives, TOP_ALTERNATIVES))
        self.ids, self.eot_id = tokenizer.encode(prompt), tokenizer.eot_id
        self.snapshot = StorySnapshot(text=prompt, seed=seed, notices=prompt_notices(len(self.ids), block_size),
                                      prompt_ids=tuple(self.ids), source=source)
        self._text, self._start = Detokenizer(tokenizer, self.params), time.perf_counter()

    def add(self, tokens: Iterable[SampledToken]) -> StorySnapshot:
        snap, n, notices = self.snapshot, self.snapshot.n_tokens, self.snapshot.notices
        pieces, alternatives, ranks, ids = [], [], [], []
        for token in map(self._text.add, tokens):
            n += 1
            ids.append(token.id)
            if token.id == self.eot_id:
                notices += ("The model ended the story (<|endoftext|>).",)
                continue
            pieces.append((token.text, token.prob))
            alternatives.append(tuple((text, prob) for _, text, prob in token.alternatives))
            ranks.append(next((r for r, (a, _, _) in enumerate(token.alternatives) if a == token.id), -1))
        self.snapshot = StorySnapshot(
            text=snap.text + "".join(p for p, _ in pieces), pieces=snap.pieces + tuple(pieces),
            alternatives=snap.alternatives + tuple(alternatives), chosen_rank=snap.chosen_rank + tuple(ranks),
            n_tokens=n, tokens_per_sec=n / max(time.perf_counter() - self._start, 1e-9), seed=snap.seed,
            notices=notices, prompt_ids=snap.prompt_ids, ids=snap.ids + tuple(ids), source=snap.source)
        return self.snapshot


def stream_story(source: Engine | Batcher, tokenizer: Tokenizer, prompt: str | None, params: SamplingParams
                 ) -> Iterator[StorySnapshot]:
    """Yield a StorySnapshot after every sampled token. A params.seed of None draws one (shown to the user)."""
    story = StoryBuilder(tokenizer, prompt, params, source.block_size)
    for token in source.generate(story.ids, story.params):
        yield story.add([token])


async def astream_story(batcher: Batcher, tokenizer: Tokenizer, prompt: str | None, params: SamplingParams,
                        interval: float = 0.0, total_rate: float = 0.0, source: str = ""
                        ) -> AsyncIterator[StorySnapshot]:
    """stream_story for an asyncio server: a snapshot per list of tokens from `Batcher.chunks` (at most one per
    `interval` seconds; see there for `total_rate`), holding every token generated since the last."""
    story = StoryBuilder(tokenizer, prompt, params, batcher.block_size, source)
    async for tokens in batcher.chunks(story.ids, story.params, interval, total_rate):
        yield story.add(tokens)
