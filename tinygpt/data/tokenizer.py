"""GPT-2 BPE tokenizer, offline: tiktoken built from the ranks file committed in `tinygpt/assets`.

Owns encoding/decoding and the streaming decoder that never emits half a UTF-8 character.
"""
from __future__ import annotations

import base64
import codecs
import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Iterable

import tiktoken

RANKS_PATH = Path(__file__).resolve().parents[1] / "assets" / "gpt2.tiktoken"
RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
# tiktoken's r50k/gpt2 split pattern (tiktoken_ext/openai_public.py).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
EOT_TEXT = "<|endoftext|>"
EOT_ID = 50256


@lru_cache(maxsize=1)
def _encoding() -> tiktoken.Encoding:
    data = RANKS_PATH.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != RANKS_SHA256:
        raise RuntimeError(
            f"{RANKS_PATH} is corrupt: sha256 {digest}, expected {RANKS_SHA256}. "
            "Restore it from git (git checkout -- tinygpt/assets/gpt2.tiktoken)."
        )
    ranks = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return tiktoken.Encoding(
        name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
        special_tokens={EOT_TEXT: EOT_ID}, explicit_n_vocab=50257,
    )


class Tokenizer:
    """GPT-2 BPE (ids identical to tiktoken's `gpt2`), loaded from the package with no network."""

    name = "gpt2"
    sha256 = RANKS_SHA256
    eot_id = EOT_ID
    eot_text = EOT_TEXT
    vocab_size = 50257

    def __init__(self) -> None:
        self.enc = _encoding()
        self._texts: dict[int, str] = {}  # id -> its text alone, filled as ids are seen

    def token_text(self, token_id: int) -> str:
        """One token's text on its own (remembered: a playground shows a few thousand distinct ids' texts
        as alternatives, many times each)."""
        text = self._texts.get(token_id)
        if text is None:
            text = self._texts[token_id] = self.decode([token_id])
        return text

    def encode(self, text: str, allow_eot: bool = False) -> list[int]:
        """Text to ids. `<|endoftext|>` in the text is plain text unless `allow_eot`."""
        if allow_eot:
            return self.enc.encode(text, allowed_special={EOT_TEXT})
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Many texts in this thread. tiktoken releases the GIL, so callers run batches on several
        threads; unlike tiktoken's own batch encoder, no thread pool is made per call."""
        encode = self.enc.encode_ordinary
        return [encode(text) for text in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return self.enc.decode(list(ids), errors="replace")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self.enc.decode_bytes(list(ids))

    def stream_decoder(self) -> "StreamDecoder":
        return StreamDecoder(self)


class StreamDecoder:
    """Turns ids into text one at a time, holding back bytes of an unfinished UTF-8 character."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """Text completed by this token ('' while a character is still incomplete)."""
        return self._utf8.decode(self.tokenizer.decode_bytes([token_id]))

    def flush(self) -> str:
        """Whatever is held back, at the end of a stream."""
        return self._utf8.decode(b"", final=True)
