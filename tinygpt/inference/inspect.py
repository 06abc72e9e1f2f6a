"""Looking inside the model at one token of a story: what each attention head looked at, and the logit lens.

`inspect(model, ids, position)` runs the model's own modules over the window it read when it produced
`ids[position]` (teacher-forced: the story's own tokens) and records, through forward hooks:
- the attention weights of the query that produced it, for every layer and head, over that window: the
  weights SDPA applied (model.gpt.causal_attention_probs, checked against SDPA's output in the tests);
- the logit lens: the residual stream after the embedding and after each block, read through the final
  LayerNorm and the head, as the top tokens and their probabilities, and where the token written was among them.
A story longer than the context was written in sliding windows (tinygpt.inference.engine.Stream); a token is
inspected in the window the model actually saw. For a model with kept-token rows the shared row is reported as
what it is: one row for every token without its own (id -1).

`first_top_layers` runs the lens over a whole story at once: the layer at which each token became the top.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from tinygpt.data.tokenizer import EOT_ID
from tinygpt.inference.engine import PADDING, Stream, sliding_keep, windows_read
from tinygpt.model.gpt import GPT, causal_attention_probs

SHARED_ROW = -1  # the id reported for a kept-token model's shared row
MAX_IDS = 4096  # the most story tokens an inspection takes


@dataclass(frozen=True)
class Inspection:
    """What the model did to write `token` (its id) at `position` of the story."""

    position: int
    token: int
    window: tuple[int, ...]  # the token ids it read, the last of them its input at this step
    start: int  # the story index of window[0]; -1 when the window starts with the <|endoftext|> a story begins with
    attention: torch.Tensor  # (n_layer, n_head, len(window)) fp32: the weights of the query that wrote `token`
    lens: tuple[tuple[tuple[int, float], ...], ...]  # per layer (embedding, block 1, ...): top (id, prob)
    lens_token: tuple[tuple[int, float], ...]  # per layer: the token's rank (0 = top) and probability

    def to_json(self) -> dict:
        return {"position": self.position, "token": self.token, "window": list(self.window), "start": self.start,
                "attention": [[[round(w, 6) for w in head] for head in layer] for layer in self.attention.tolist()],
                "lens": [[{"id": i, "prob": round(p, 6)} for i, p in layer] for layer in self.lens],
                "lens_token": [{"rank": r, "prob": round(p, 6)} for r, p in self.lens_token]}


def context_window(ids: list[int], position: int, prompt_tokens: int, block_size: int) -> tuple[list[int], int]:
    """The tokens the engine read when it wrote ids[position] (the prompt being ids[:prompt_tokens]), and the story
    index of the first (-1: the <|endoftext|> an empty prompt starts from). Replays the engine's own Stream: the
    prompt's last block_size tokens, then each token written, sliding as generation slid."""
    prompt = min(prompt_tokens, position)  # a prompt token is explained by the prompt before it
    first = max(0, prompt - block_size)
    stream = Stream(list(ids[first:prompt]) or [EOT_ID], PADDING, block_size, sliding_keep(block_size))
    pushed = ids[prompt:position]
    for token in pushed:
        stream.push(token)
    seen = (prompt - first or 1) + len(pushed)  # tokens the stream was given, its starting <|endoftext|> included
    dropped = seen - len(stream.context)
    return stream.context, (first + dropped) if prompt else dropped - 1


def check_request(ids: list[int], position: int, prompt_tokens: int, vocab_size: int) -> None:
    """ValueError, saying what to send, for a request `inspect` cannot answer."""
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ValueError("the story must be text or a list of token ids")
    if not ids:
        raise ValueError("the story is empty: generate one first")
    if len(ids) > MAX_IDS:
        raise ValueError(f"the story has {len(ids)} tokens; at most {MAX_IDS} can be inspected")
    if bad := [i for i in ids if not 0 <= i < vocab_size]:
        raise ValueError(f"token ids must be in [0, {vocab_size}); got {bad[0]}")
    if not isinstance(position, int) or isinstance(position, bool) or not (0 if prompt_tokens == 0 else 1) <= position < len(ids):
        raise ValueError(f"position must be an integer from {0 if prompt_tokens == 0 else 1} to {len(ids) - 1} "
                         f"(the token to explain), got {position!r}")
    if not isinstance(prompt_tokens, int) or not 0 <= prompt_tokens <= len(ids):
        raise ValueError(f"prompt_tokens must be from 0 to {len(ids)}, got {prompt_tokens!r}")


@torch.no_grad()
def inspect(model: GPT, ids: list[int], position: int, prompt_tokens: int | None = None, top: int = 5) -> Inspection:
    """How `model` wrote ids[position]: attention and logit lens (see the module docstring). `prompt_tokens`: how
    many of `ids` were the prompt (default: all before `position`, so the window is the last block_size of them)."""
    prompt_tokens = position if prompt_tokens is None else prompt_tokens
    check_request(ids, position, prompt_tokens, model.config.vocab_size)
    window, start = context_window(ids, position, prompt_tokens, model.config.block_size)
    captured = _recorded(model, window, attention=True)
    # the last query's weights, (n_layer, n_head, len(window))
    attention = torch.stack([causal_attention_probs(q[:, :, -1:], k)[0, :, 0] for q, k in captured["qk"]]).cpu()
    streams = torch.stack([x[0, -1] for x in captured["stream"]])  # (n_layer + 1, C)
    rows = model.lm_head(model.transformer.ln_f(streams)).float().log_softmax(-1)  # (n_layer + 1, n_rows)
    return Inspection(position, ids[position], tuple(window), start, attention,
                      *_lens(model, rows, ids[position], top))


def _recorded(model: GPT, window: list[int], attention: bool = False) -> dict[str, list]:
    """Run the model over `window`, recording the residual stream after the embedding and after each block
    ("stream": each (1, T, C)) and, with `attention`, each layer's queries and keys ("qk")."""
    captured: dict[str, list] = {"qk": [], "stream": []}
    hooks = [model.transformer.drop.register_forward_hook(lambda m, i, out: captured["stream"].append(out))]
    for block in model.transformer.h:
        hooks.append(block.register_forward_hook(lambda m, i, out: captured["stream"].append(out)))
        if attention:
            hooks.append(block.attn.causal.register_forward_hook(lambda m, args, out: captured["qk"].append(args[:2])))
    try:
        model.hidden(torch.tensor([window], device=model.transformer.wpe.weight.device))
    finally:
        for hook in hooks:
            hook.remove()
    return captured


@torch.no_grad()
def first_top_layers(model: GPT, prompt_ids: list[int], ids: list[int], eot_id: int = EOT_ID) -> list[int]:
    """The story through the layers: for each of `ids` (written after `prompt_ids`), the first layer after
    which the logit lens had it as the top prediction (0: after the embedding, n_layer: only at the end; -1:
    never, a token sampled below the top). Each read in the window the engine read: one pass per window."""
    out: list[int] = []
    for window, i, n in windows_read(prompt_ids, ids, model.config.block_size, eot_id):
        streams = torch.stack([x[0, i - 1:i - 1 + n] for x in _recorded(model, window)["stream"]])  # (L+1, n, C)
        top = model.lm_head(model.transformer.ln_f(streams)).argmax(-1)  # (L+1, n) head rows
        written = model.rows(torch.tensor(ids[len(out):len(out) + n], device=top.device))  # (n,)
        hit = top == written[None]
        out += torch.where(hit.any(0), hit.int().argmax(0), -1).tolist()
    return out


def _lens(model: GPT, rows: torch.Tensor, token: int, top: int) -> tuple[tuple, tuple]:
    """Top (id, prob) per layer from the head's log-probabilities over its rows, and the token's (rank, prob)."""
    id_of = _ids_of_rows(model)
    token_row = int(model.rows(torch.tensor(token, device=rows.device)))
    values, where = rows.topk(min(top, rows.size(-1)), -1)
    lens = tuple(tuple((id_of[r], float(v.exp())) for v, r in zip(vs, ws.tolist())) for vs, ws in zip(values, where))
    ranks = (rows > rows[:, token_row:token_row + 1]).sum(-1)
    return lens, tuple((int(r), float(p)) for r, p in zip(ranks, rows[:, token_row].exp()))


def _ids_of_rows(model: GPT) -> list[int]:
    """The token id of each head row; SHARED_ROW for a kept-token model's last row."""
    c = model.config
    if not c.kept_tokens:
        return list(range(c.vocab_size))
    ids = [SHARED_ROW] * c.n_rows
    for token, row in enumerate(model.row_of.tolist()):
        if row < c.kept_tokens:
            ids[row] = token
    return ids
