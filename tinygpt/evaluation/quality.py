"""What a reader sees, in figures: stories from the playground's beginnings and fixed seeds, scored for loops
(repeated 3- and 4-grams), variety (distinct-1/2), made-up words, endings, a named character kept, and a cast
kept past the 128-token window (no one new named after it; written by people, stories do bring in someone new,
so read it beside the same figure over valid.txt, which bench/story_quality.py prints).

Used by bench/story_quality.py (a checkpoint's full report), by each evaluation in training (the sample's
figures) and by the shipped model's card.
"""
from __future__ import annotations

import re
from dataclasses import replace
from typing import Iterable

from tinygpt.data.copy_index import MIN_TOKENS, CopyIndex
from tinygpt.data.tokenizer import Tokenizer
from tinygpt.evaluation.story_loss import SPLIT
from tinygpt.inference.engine import Engine
from tinygpt.inference.sampling import SamplingParams

BEGINNINGS = ("Once upon a time, there was a little girl named Lily.", "Tom and his dog went to the park.",
              "One day, a small bird found a shiny key.", "The sun was hot, so Mia wanted ice cream.",
              "Ben had a red ball. He")  # the playground's examples
MAX_NEW = 300
WORD = re.compile(r"[a-z]+")
HEADLINE = ("repeated 4-grams", "distinct-2", "ended", "name kept", "cast kept past 128")


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


NOT_NAMES = {"I", "Mom", "Dad", "Mommy", "Daddy", "Grandma", "Grandpa", "Mr", "Mrs", "Miss", "The", "Once", "One"}
NAME = re.compile(r"\b[A-Z][a-z]+\b")


def names(text: str) -> list[tuple[int, str]]:
    """(character offset, name) of each capitalized word that neither starts a sentence nor opens a quote."""
    found = []
    for m in NAME.finditer(text):
        before = text[:m.start()].rstrip()
        if before and before[-1] not in '.!?"\u201c\u201d:' and m.group() not in NOT_NAMES:
            found.append((m.start(), m.group()))
    return found


def cast_kept(story: str, tokenizer: Tokenizer, split: int = SPLIT) -> bool | None:
    """For a story longer than `split` tokens that names someone in its first `split`: True when its part past
    token `split` names no one new (the dog that was Spot stays Spot). None for a story this does not apply to."""
    ids = tokenizer.encode(story)
    if len(ids) <= split:
        return None
    cut = len(tokenizer.decode(ids[:split]))
    found = names(story)
    early = {n for at, n in found if at < cut}
    return {n for at, n in found if at >= cut} <= early if early else None


def copied_share(stories: list[tuple[str, str, bool]], index: CopyIndex, tokenizer: Tokenizer,
                 min_tokens: int = MIN_TOKENS) -> float:
    """The share of the generated tokens that lie in spans of `min_tokens`+ found in the training text."""
    copied = total = 0
    for prompt, text, _ in stories:
        head, ids = tokenizer.encode(prompt), tokenizer.encode(prompt + text)
        covered = set()
        for start, end in index.spans(ids, min_tokens):
            covered.update(range(max(start, len(head)), end))
        copied, total = copied + len(covered), total + max(len(ids) - len(head), 0)
    return copied / max(total, 1)


def report(stories: list[tuple[str, str, bool]], known: set[str] | None = None,
           tokenizer: Tokenizer | None = None, copies: CopyIndex | None = None) -> dict[str, float]:
    """Figures over (prompt, generated text, ended with <|endoftext|>) triples; `known`: the training text's
    words (then 'unknown words per 100' too); `tokenizer`: then 'cast kept past 128' too (see `cast_kept`),
    and with `copies` (the training text's copy index) 'copied share' (see `copied_share`)."""
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
    if tokenizer is not None:
        kept_cast = [k for prompt, text, _ in stories if (k := cast_kept(prompt + text, tokenizer)) is not None]
        if kept_cast:
            out["cast kept past 128"] = sum(kept_cast) / len(kept_cast)
            out["stories past 128 naming someone"] = len(kept_cast)
        if copies is not None:
            out["copied share"] = copied_share(stories, copies, tokenizer)
    return out


def headline_figures(figures: dict[str, float]) -> dict[str, float]:
    """The headline figures alone, rounded: what a metrics record or a checkpoint keeps."""
    return {k: round(figures[k], 3) for k in HEADLINE if k in figures}


def headline(figures: dict[str, float], keys: Iterable[str] = HEADLINE) -> str:
    """'repeated 4-grams 0.021, distinct-2 0.481, ...': the figures a log line or a card shows."""
    return ", ".join(f"{k} {figures[k]:.3f}" for k in keys if k in figures)


PLAIN_WORDS = {"repeated 4-grams": "4-grams repeated", "distinct-2": "distinct word pairs", "ended": "ended",
               "name kept": "still name their hero at the end",
               "cast kept past 128": "of those past 128 tokens, name no one new after it"}


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
