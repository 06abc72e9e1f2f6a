"""Stories as text: the engine's token ids turned into UTF-8-safe text pieces, and one playground request as a
stream of immutable snapshots (the text so far, each piece with its probability and alternatives, the stats
and any notices), which a UI can render or keep without copying. Snapshots come from an Engine (one stream,
blocking) or anything that writes tokens as it does (a server's Batcher: tinygpt.serving.stream)."""
from __future__ import annotations

import dataclasses
import time
import unicodedata
from array import array
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Protocol

from tinygpt.data.tokenizer import Tokenizer
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
    """What the page shows after each token. Each token gives a new snapshot; none is changed after it is made.

    A page keeps its story's last snapshot for as long as the visitor may come back (an hour after the page
    closes), so the per-token record is flat arrays of numbers, about 75 bytes a token, rather than Python tuples
    of strings and floats (about 750): `pieces`, `alternatives` and `chosen_rank` are built from them on demand.
    """

    text: str  # the prompt and everything generated so far
    n_tokens: int = 0  # tokens generated, <|endoftext|> included
    tokens_per_sec: float = 0.0
    seed: int = 0
    notices: tuple[str, ...] = ()
    prompt_ids: tuple[int, ...] = ()  # the prompt as tokens
    ids: array = field(default_factory=lambda: array("i"))  # the tokens generated, <|endoftext|> included
    source: str = ""  # which model wrote it (a label the caller chose)
    params: SamplingParams | None = None  # the settings it was written with, its seed resolved (shared, not copied)
    given: int = 0  # its first `given` ids were given, not written (a branch: tinygpt.inference.branch)
    # One entry per generated piece (<|endoftext|> has none): where it ends in `text` (the first begins at
    # `start`), its probability, its rank among its alternatives (-1: below them), and `width` alternatives
    # as ids and probabilities (id -1 past the ones the model gave), turned into text by `token_text`.
    start: int = 0
    ends: array = field(default_factory=lambda: array("i"))
    probs: array = field(default_factory=lambda: array("d"))
    ranks: array = field(default_factory=lambda: array("b"))
    width: int = TOP_ALTERNATIVES
    alt_ids: array = field(default_factory=lambda: array("i"))
    alt_probs: array = field(default_factory=lambda: array("d"))
    token_text: Callable[[int], str] | None = field(default=None, repr=False, compare=False)  # shared, not copied

    @property
    def pieces(self) -> tuple[tuple[str, float], ...]:
        """Each generated text piece and its probability ('' while a UTF-8 character is unfinished)."""
        starts = [self.start, *self.ends[:-1]]
        return tuple((self.text[a:b], p) for a, b, p in zip(starts, self.ends, self.probs))

    @property
    def alternatives(self) -> tuple[tuple[tuple[str, float], ...], ...]:
        """The top candidates at each piece as (text, probability), best first."""
        w, ids, probs = self.width, self.alt_ids, self.alt_probs
        return tuple(tuple((self.token_text(i), p) for i, p in zip(ids[k:k + w], probs[k:k + w]) if i >= 0)
                     for k in range(0, len(ids), w))

    @property
    def chosen_rank(self) -> tuple[int, ...]:
        """Each piece's rank among its alternatives (0 = the top; -1 = below them)."""
        return tuple(self.ranks)


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
                                      prompt_ids=tuple(self.ids), source=source, params=self.params,
                                      start=len(prompt), width=self.params.alternatives,
                                      token_text=tokenizer.token_text)
        self._text, self._start = tokenizer.stream_decoder(), time.perf_counter()

    def add(self, tokens: Iterable[SampledToken]) -> StorySnapshot:
        snap, notices, width = self.snapshot, self.snapshot.notices, self.snapshot.width
        text, ids = [snap.text], array("i", snap.ids)
        ends, probs, ranks = array("i", snap.ends), array("d", snap.probs), array("b", snap.ranks)
        alt_ids, alt_probs = array("i", snap.alt_ids), array("d", snap.alt_probs)
        end = ends[-1] if ends else snap.start
        for token in tokens:
            ids.append(token.id)
            if token.id == self.eot_id:  # not shown: the bytes of a character it cut short are dropped
                self._text.flush()
                notices += ("The model ended the story (<|endoftext|>).",)
                continue
            piece = self._text.push(token.id)
            if len(ids) == self.params.max_new_tokens:
                piece += self._text.flush()
            text.append(piece)
            end += len(piece)
            alts = token.alternatives[:width]
            ends.append(end)
            probs.append(token.prob)
            ranks.append(next((r for r, (a, _) in enumerate(alts) if a == token.id), -1))
            alt_ids.extend([a for a, _ in alts] + [-1] * (width - len(alts)))
            alt_probs.extend([p for _, p in alts] + [0.0] * (width - len(alts)))
        self.snapshot = dataclasses.replace(
            snap, text="".join(text), n_tokens=len(ids), tokens_per_sec=len(ids) / max(time.perf_counter() -
                                                                                        self._start, 1e-9),
            notices=notices, ids=ids, ends=ends, probs=probs, ranks=ranks, alt_ids=alt_ids,
            alt_probs=alt_probs)
        return self.snapshot


    def give(self, tokens: list[SampledToken]) -> StorySnapshot:
        """`add` tokens the story was given (a branch's kept and chosen ones), recorded as such."""
        self.snapshot = dataclasses.replace(self.add(tokens), given=self.snapshot.given + len(tokens))
        return self.snapshot


class TokenSource(Protocol):
    """What writes a story's tokens: an Engine, or a server's Batcher."""
    block_size: int

    def generate(self, ids: list[int], params: SamplingParams) -> Iterator[SampledToken]: ...


def stream_story(source: TokenSource, tokenizer: Tokenizer, prompt: str | None, params: SamplingParams
                 ) -> Iterator[StorySnapshot]:
    """Yield a StorySnapshot after every sampled token. A params.seed of None draws one (shown to the user)."""
    story = StoryBuilder(tokenizer, prompt, params, source.block_size)
    for token in source.generate(story.ids, story.params):
        yield story.add([token])
