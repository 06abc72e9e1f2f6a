"""What a reader sees, in figures: stories from the playground's beginnings and fixed seeds, scored for loops
(repeated 3- and 4-grams), variety (distinct-1/2), made-up words, endings and a named character kept.

Used by bench/story_quality.py (a checkpoint's full report), by each evaluation in training (the sample's
figures) and by the shipped model's card.
"""
from __future__ import annotations

import re
from dataclasses import replace
from typing import Iterable

from tinygpt.data.tokenizer import Tokenizer
from tinygpt.inference.engine import Engine
from tinygpt.inference.sampling import SamplingParams

BEGINNINGS = ("Once upon a time, there was a little girl named Lily.", "Tom and his dog went to the park.",
              "One day, a small bird found a shiny key.", "The sun was hot, so Mia wanted ice cream.",
              "Ben had a red ball. He")  # the playground's examples
MAX_NEW = 300
WORD = re.compile(r"[a-z]+")
HEADLINE = ("repeated 4-grams", "distinct-2", "ended", "name kept")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def vocabulary(text: str) -> set[str]:
    """Every word of a training text: what `report` counts as known."""
    return set(words(text))


def repeated(ws: list[str], n: int) -> tuple[int, int]:
    """(n-grams that appeared earlier in the same text, all n-grams)."""
    seen, again = set(), 0
    grams = [tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)]
    for g in grams:
        again += g in seen
        seen.add(g)
    return again, len(grams)


def first_name(prompt: str) -> str | None:
    """The first character the beginning names: a capitalized word that does not start a sentence."""
    for m in re.finditer(r"(?<![.!?] )(?<!^)\b([A-Z][a-z]+)\b", prompt):
        if m.group(1) not in ("I", "The", "One", "Once"):
            return m.group(1)
    m = re.match(r"([A-Z][a-z]+) (?:and|had|was|went)\b", prompt)
    return m.group(1) if m else None


def report(stories: list[tuple[str, str, bool]], known: set[str] | None = None) -> dict[str, float]:
    """Figures over (prompt, generated text, ended with <|endoftext|>) triples; `known`: the training text's
    words (then 'unknown words per 100' too)."""
    r3 = r4 = n3 = n4 = unknown = total = 0
    uni, bi, n_uni, n_bi, named, kept = set(), set(), 0, 0, 0, 0
    for prompt, text, _ in stories:
        ws = words(text)
        a, b = repeated(ws, 3)
        c, d = repeated(ws, 4)
        r3, n3, r4, n4 = r3 + a, n3 + b, r4 + c, n4 + d
        uni.update(ws)
        bi.update(zip(ws, ws[1:]))
        n_uni, n_bi = n_uni + len(ws), n_bi + max(0, len(ws) - 1)
        if known is not None:
            unknown += sum(w not in known for w in ws)
            total += len(ws)
        if name := first_name(prompt):
            named += 1
            kept += name.lower() in ws[2 * len(ws) // 3:]
    out = {"repeated 3-grams": r3 / max(n3, 1), "repeated 4-grams": r4 / max(n4, 1),
           "distinct-1": len(uni) / max(n_uni, 1), "distinct-2": len(bi) / max(n_bi, 1),
           "ended": sum(e for *_, e in stories) / max(len(stories), 1)}
    if named:  # (a beginning with no name has nothing to keep)
        out["name kept"] = kept / named
    if known is not None:
        out["unknown words per 100"] = 100 * unknown / max(total, 1)
    return out


def headline_figures(figures: dict[str, float]) -> dict[str, float]:
    """The headline figures alone, rounded: what a metrics record or a checkpoint keeps."""
    return {k: round(figures[k], 3) for k in HEADLINE if k in figures}


def headline(figures: dict[str, float], keys: Iterable[str] = HEADLINE) -> str:
    """'repeated 4-grams 0.021, distinct-2 0.481, ...': the figures a log line or a card shows."""
    return ", ".join(f"{k} {figures[k]:.3f}" for k in keys if k in figures)


PLAIN_WORDS = {"repeated 4-grams": "4-grams repeated", "distinct-2": "distinct word pairs", "ended": "ended",
               "name kept": "still name their hero at the end"}


def describe(record: dict) -> str:
    """A `story_quality` record (tinygpt.sharing.ship) in words: '40 stories: 4-grams repeated 2%, ...'."""
    figures = ", ".join(f"{said} {record[k]:.0%}" for k, said in PLAIN_WORDS.items() if k in record)
    return f"{record['stories']} stories of up to {record['max_new_tokens']} tokens ({record['settings']}): {figures}"


def write_stories(engine: Engine, n: int, params: SamplingParams = SamplingParams(),
                  tokenizer: Tokenizer | None = None) -> list[tuple[str, str, bool]]:
    """n stories: beginning i % 5, seed i, `params` otherwise (default: the playground's), up to MAX_NEW tokens."""
    tok = tokenizer or Tokenizer()
    stories = []
    for i in range(n):
        prompt = BEGINNINGS[i % len(BEGINNINGS)]
        ids = [t.id for t in engine.generate(tok.encode(prompt), replace(params, max_new_tokens=MAX_NEW, seed=i))]
        ended = bool(ids) and ids[-1] == tok.eot_id
        stories.append((prompt, tok.decode(ids[:-1] if ended else ids), ended))
    return stories
