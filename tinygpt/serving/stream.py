"""A story for an asyncio server: the snapshots of tinygpt.inference.story, written by the Batcher's shared
decode steps and handed over a few times a second."""
from __future__ import annotations

from typing import AsyncIterator

from tinygpt.data.tokenizer import Tokenizer
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
