"""One playground request: clean the prompt, stream the story, and keep what the UI shows beside it
(token count, tokens/s, each token's probability and the alternatives the model considered)."""
from __future__ import annotations

import secrets
import time
import unicodedata
from dataclasses import dataclass, field
from typing import Iterator

from tinygpt.sampling import generate
from tinygpt.serving import LoadedModel

TOP_ALTERNATIVES = 5


@dataclass
class StoryUpdate:
    text: str  # the prompt and everything generated so far
    pieces: list[tuple[str, float]] = field(default_factory=list)  # generated text pieces and their probability
    alternatives: list[list[tuple[str, float]]] = field(default_factory=list)  # top candidates per piece
    n_tokens: int = 0
    tokens_per_sec: float = 0.0
    seed: int = 0
    notices: list[str] = field(default_factory=list)


def clean_prompt(text: str | None) -> str:
    """Drop control characters (keeping newlines and tabs) that the tokenizer would turn into noise."""
    text = (text or "").replace("\r\n", "\n").replace("\r", "\n")
    return "".join(c for c in text if c in "\n\t" or unicodedata.category(c)[0] != "C")


def stream_story(loaded: LoadedModel, prompt: str | None, temperature: float, top_k: int, top_p: float,
                 max_new_tokens: int, seed: int | None = None) -> Iterator[StoryUpdate]:
    """Yield a StoryUpdate after every sampled token. Raises ValueError for out-of-range settings."""
    prompt = clean_prompt(prompt)
    seed = secrets.randbelow(2**31) if seed is None or seed < 0 else int(seed)
    update = StoryUpdate(text=prompt, seed=seed)
    ids = loaded.tokenizer.encode(prompt)
    block = loaded.model.config.block_size
    if not ids:
        update.notices.append("Empty prompt: the model starts a story from scratch.")
    elif len(ids) > block:
        update.notices.append(f"The prompt is {len(ids)} tokens; the model reads only its last {block}.")
    start = time.perf_counter()
    for token in generate(loaded.model, loaded.tokenizer, ids, max_new_tokens=int(max_new_tokens),
                          temperature=float(temperature), top_k=int(top_k), top_p=float(top_p), seed=seed,
                          alternatives=TOP_ALTERNATIVES):
        update.n_tokens += 1
        update.tokens_per_sec = update.n_tokens / max(time.perf_counter() - start, 1e-9)
        if token.id == loaded.tokenizer.eot_id:
            update.notices.append("The model ended the story (<|endoftext|>).")
        else:
            update.text += token.text
            update.pieces.append((token.text, token.prob))
            update.alternatives.append([(text, prob) for _, text, prob in token.alternatives])
        yield update
