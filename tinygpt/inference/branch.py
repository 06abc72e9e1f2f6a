"""Branching a story: keep its first p tokens, put a chosen token at p, and write on from there.

A branch is a new story whose first tokens are given: `scored_tokens` gives them the probabilities and
alternatives the model had for them (one forward pass per window the engine would have read, not a decode step
per token), and the engine writes the rest from the prompt, the kept tokens and the chosen one, with the
story's settings and seed. The same request writes the same branch again."""
from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import torch

from tinygpt.data.tokenizer import EOT_ID, Tokenizer
from tinygpt.inference.engine import Engine, SampledToken, windows_read
from tinygpt.inference.sampling import SamplingParams
from tinygpt.inference.story import TOP_ALTERNATIVES, StoryBuilder, StorySnapshot
from tinygpt.model.gpt import GPT

MAX_BRANCH_IDS = 4096  # the longest story a branch request may carry


def check_branch(kept: Sequence[int], chosen: int, params: SamplingParams, vocab_size: int) -> None:
    """ValueError, saying what to send, unless `kept` (the story's generated ids before the branch point) and
    `chosen` are token ids and the branch point lies inside the story's length."""
    if not isinstance(kept, list | tuple) or not all(isinstance(t, int) and not isinstance(t, bool) for t in kept):
        raise ValueError("ids must be a list of the story's token ids (integers) before the branch point")
    if len(kept) > MAX_BRANCH_IDS:
        raise ValueError(f"the story is {len(kept):,} tokens before the branch point; at most {MAX_BRANCH_IDS:,}")
    if bad := [t for t in [*kept, chosen] if not (isinstance(t, int) and 0 <= t < vocab_size)]:
        raise ValueError(f"token ids must be integers in [0, {vocab_size}), got {bad[0]!r}")
    if len(kept) >= params.max_new_tokens:
        raise ValueError(f"the branch point ({len(kept)}) must come before the story's end: max_new_tokens is "
                         f"{params.max_new_tokens}")


@torch.no_grad()
def scored_tokens(model: GPT, prompt_ids: Sequence[int], ids: Sequence[int], alternatives: int = TOP_ALTERNATIVES,
                  eot_id: int = EOT_ID) -> list[SampledToken]:
    """Each of `ids`, written after `prompt_ids`, as the engine would have written it: the model's probability
    for it (temperature 1) and its top `alternatives`, each read with the context the engine keeps (the last
    block_size tokens, sliding to the last 3/4 when full). One forward pass per window."""
    device, ids, out = model.transformer.wpe.weight.device, list(ids), []
    for window, i, n in windows_read(list(prompt_ids), ids, model.config.block_size, eot_id):
        logits, _ = model(torch.tensor([window], device=device))  # (1, len(window), vocab)
        logp = torch.log_softmax(logits[0, i - 1:].float(), dim=-1)  # (n, vocab)
        top_p, top_ids = logp.topk(alternatives, dim=-1)
        written = ids[len(out):len(out) + n]
        picked = logp.gather(1, torch.tensor(written, device=device)[:, None])[:, 0].exp()
        out += [SampledToken(t, float(p), tuple(zip(a.tolist(), b.exp().tolist())))
                for t, p, a, b in zip(written, picked, top_ids, top_p)]
    return out


def branch_story(model: GPT | Engine, tokenizer: Tokenizer, prompt: str | None, kept: Sequence[int], chosen: int,
                 params: SamplingParams) -> Iterator[StorySnapshot]:
    """The story after `prompt` that starts with the generated ids `kept`, then `chosen`, then what the model
    writes with `params` (max_new_tokens counts the given tokens too): a snapshot after the given tokens, then
    one per token written (the Python form of the page's branching; see tinygpt.serving.stream for a server's)."""
    engine = model if isinstance(model, Engine) else Engine(model, eot_id=tokenizer.eot_id)
    check_branch(kept, chosen, params, engine.model.config.vocab_size)
    story = StoryBuilder(tokenizer, prompt, params, engine.block_size)
    given = scored_tokens(engine.model, story.ids, [*kept, chosen], story.params.alternatives, tokenizer.eot_id)
    yield story.give(given)
    if rest := continuation(story, kept, chosen):
        for token in engine.generate(*rest):
            yield story.add([token])


def continuation(story: StoryBuilder, kept: Sequence[int], chosen: int) -> tuple[list[int], SamplingParams] | None:
    """What the engine writes on from after a branch's given tokens: (context ids, settings for what is left), or
    None when the branch ends there (the chosen token ends the story, or no tokens are left)."""
    params, given = story.params, len(kept) + 1
    if given >= params.max_new_tokens or (chosen == story.eot_id and params.stop_at_eot):
        return None
    return [*story.ids, *kept, chosen], dataclasses.replace(params, max_new_tokens=params.max_new_tokens - given)
