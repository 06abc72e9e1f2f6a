"""The Hub model card (README.md with YAML metadata) for a TinyGPT checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

from tinygpt.data.tokenizer import Tokenizer
from tinygpt.evaluation.quality import describe
from tinygpt.evaluation.story_loss import story_line
from tinygpt.inference.sampling import SamplingParams
from tinygpt.inference.story import generate
from tinygpt.model.checkpoint import load_checkpoint

TAGS = ["tinygpt", "gpt2", "text-generation", "tinystories", "pytorch", "safetensors"]

BODY = """
# {name}

A {params:.1f}M-parameter GPT-2-style language model trained from scratch on
[TinyStories](https://huggingface.co/datasets/roneneldan/TinyStories) with [TinyGPT](https://github.com/).

| | |
|---|---|
| architecture | decoder-only pre-LayerNorm transformer, tied input/output embedding, GPT-2 BPE (50,257 tokens) |
| shape | {n_layer} layers, {n_head} heads, width {n_embd}, context {block_size} tokens, dropout {dropout} |
| parameters | {params_exact:,} |
| training tokens | {tokens} |
| step | {step} |
| final validation loss | {val_loss} |
| story loss (each validation story from its beginning: all, before and after position 128) | {story_loss} |
| its stories | {quality} |

## Training settings

```json
{train_config}
```

{loss_picture}

## A sample (temperature 0.8, top-k 50, seed 0)

> {sample}

## How to use it

With this package (`pip install -r requirements.txt` in the TinyGPT repository):

```python
from tinygpt import Tokenizer, from_pretrained, generate
model, _ = from_pretrained("{repo_id}")          # downloads once, then works offline from the cache
for t in generate(model, Tokenizer(), "Once upon a time", max_new_tokens=120, temperature=0.8, top_k=50):
    print(t.text, end="")
```

Or in the playground: `python app.py --checkpoint {repo_id}`.

{transformers}
"""


TRANSFORMERS = """With transformers: export it to a `GPT2LMHeadModel` folder, then load that as usual (GPT-2's tokenizer gives
the same ids):

```bash
python -m tinygpt.sharing.export {repo_id} tinygpt-hf
```
```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model, tok = AutoModelForCausalLM.from_pretrained("tinygpt-hf"), AutoTokenizer.from_pretrained("gpt2")
```
"""
NO_TRANSFORMERS = ("This model gives its own rows to only the {kept:,} token ids of its training data (the rest share "
                   "one), which transformers' GPT-2 cannot express, so it is used with this package only.")


def sample_story(model, seed: int = 0) -> str:
    prompt = "Once upon a time"
    tokens = generate(model, Tokenizer(), prompt, SamplingParams(max_new_tokens=80, seed=seed))
    return (prompt + "".join(t.text for t in tokens)).replace("\n", " ").strip()


def quality_line(quality: dict | None) -> str:
    """The story-quality record `ship` writes, as one table cell (or how to measure it)."""
    return describe(quality) if quality else "not measured (`python bench/story_quality.py CKPT`)"


def story_cell(meta: dict) -> str:
    story = next((meta[k] for k in ("shipped_story_loss", "story_loss_all") if meta.get(k)), None)
    return story_line(story) if story else "not measured (`python bench/story_quality.py CKPT`)"


def render_model_card(checkpoint: str | Path, repo_id: str, has_loss_png: bool = False) -> str:
    """README.md text: YAML metadata (license, datasets, tags, library) and the model's facts."""
    from huggingface_hub import ModelCardData

    model, info = load_checkpoint(checkpoint)
    meta, c = info.get("metadata", {}), model.config
    data = ModelCardData(license="mit", language="en", datasets=["roneneldan/TinyStories"], library_name="tinygpt",
                         pipeline_tag="text-generation", tags=TAGS, model_name=repo_id.split("/")[-1])
    tokens = meta.get("tokens_seen")
    val = next((meta[k] for k in ("shipped_val_loss", "val_loss_all", "val_loss") if meta.get(k) is not None), None)
    transformers = NO_TRANSFORMERS.format(kept=c.kept_tokens) if c.kept_tokens else TRANSFORMERS.format(repo_id=repo_id)
    body = BODY.format(transformers=transformers,
        name=repo_id.split("/")[-1], repo_id=repo_id, params=model.num_params() / 1e6, params_exact=model.num_params(),
        n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, block_size=c.block_size, dropout=c.dropout,
        tokens=f"{tokens:,}" if tokens else "unknown", step=meta.get("step", "unknown"),
        val_loss=f"{val:.4f}" if val is not None else "unknown",
        train_config=json.dumps(meta.get("train_config", {}), indent=2),
        loss_picture="![Training and validation loss](loss.png)" if has_loss_png else "",
        sample=sample_story(model), quality=quality_line(meta.get("story_quality")),
        story_loss=story_cell(meta))
    return f"---\n{data.to_yaml()}\n---\n{body}"
