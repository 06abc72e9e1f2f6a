"""A story for an asyncio server: the snapshots of tinygpt.inference.story, written by the Batcher's shared
decode steps and handed over a few times a second; and a branch of one (tinygpt.inference.branch)."""
from __future__ import annotations

import asyncio
from typing import AsyncIterator, Sequence

from tinygpt.data.tokenizer import Tokenizer
from tinygpt.inference.branch import check_branch, continuation, scored_tokens
from tinygpt.inference.sampling import SamplingParams
from tinygpt.inference.story import StoryBuilder, StorySnapshot
from tinygpt.serving.batching import Batcher


async def astream_story(batcher: Batcher, tokenizer: Tokenizer, prompt: str | None, params: SamplingParams,
                        interval: float = 0.0, total_rate: float = 0.0, source: str = ""
                        ) -> AsyncIterator[StorySnapshot]:
    """stream_story for an asyncio server: a snapshot per list of tokens from `Batcher.chunks` (at most one per
    `interval` seconds; see there for `total_rate`), holding every token generated since the last."""
    story = StoryBuilder(tokenizer, prompt, params, batcher.block_size, source)
    async for tokens in batcher.chunks(story.ids, story.params, interval, total_rate):
        yield story.add(tokens)


async def astream_branch(batcher: Batcher, tokenizer: Tokenizer, prompt: str | None, kept: Sequence[int],
                         chosen: int, params: SamplingParams, interval: float = 0.0, total_rate: float = 0.0,
                         source: str = "") -> AsyncIterator[StorySnapshot]:
    """branch_story for an asyncio server: the given tokens scored on the compute thread in one snapshot, then
    the rest as astream_story writes it. ValueError for a bad request (see check_branch)."""
    model = batcher.engine.model
    check_branch(kept, chosen, params, model.config.vocab_size)
    story = StoryBuilder(tokenizer, prompt, params, batcher.block_size, source)
    given = await asyncio.to_thread(batcher.compute.call, scored_tokens, model, story.ids, [*kept, chosen],
                                    story.params.alternatives, tokenizer.eot_id)
    yield story.give(given)
    if rest := continuation(story, kept, chosen):
        async for tokens in batcher.chunks(*rest, interval, total_rate):
            yield story.add(tokens)
