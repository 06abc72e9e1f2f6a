"""Export a TinyGPT checkpoint as a Hugging Face transformers `GPT2LMHeadModel` folder
(config.json + model.safetensors), loadable with `AutoModelForCausalLM.from_pretrained(folder)`.

Written with safetensors and JSON alone: exporting does not need transformers installed.
The tokenizer is GPT-2's own: `AutoTokenizer.from_pretrained("gpt2")` gives the same ids.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from tinygpt.data.tokenizer import EOT_ID
from tinygpt.fileio import atomic_dir
from tinygpt.model.gpt import GPT
from tinygpt.model.checkpoint import model_state, unwrap

# transformers' GPT-2 stores these as Conv1D weights, (in, out): the transpose of nn.Linear's (out, in).
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def hf_config(model: GPT) -> dict:
    c = model.config
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": c.vocab_size,
        "n_positions": c.block_size, "n_ctx": c.block_size, "n_embd": c.n_embd, "n_layer": c.n_layer,
        "n_head": c.n_head, "n_inner": None, "activation_function": "gelu_new", "resid_pdrop": c.dropout,
        "embd_pdrop": c.dropout, "attn_pdrop": c.dropout, "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02, "bos_token_id": EOT_ID, "eos_token_id": EOT_ID, "tie_word_embeddings": True,
        "scale_attn_weights": True, "use_cache": True, "torch_dtype": "float32",
    }


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights under transformers' GPT-2 names (the tied head is implied by tie_word_embeddings)."""
    if not model.config.bias:
        raise ValueError("transformers' GPT-2 needs biases; this model was trained with bias=False")
    if model.config.kept_tokens:
        raise ValueError(f"this model has rows for only {model.config.kept_tokens:,} token ids (train.py "
                         "--data-vocab); GPT2LMHeadModel needs one per id and cannot express the shared row's "
                         "cost, so it would not be the same model. Train with --no-data-vocab to export it.")
    out = {}
    for name, tensor in model_state(model).items():
        if name.endswith(CONV1D):
            tensor = tensor.t().contiguous()
        out[name] = tensor.float()
    return out


def export_transformers(model: torch.nn.Module, directory: str | os.PathLike) -> Path:
    """Write `directory/` (atomically) as a transformers GPT2LMHeadModel folder."""
    gpt = unwrap(model)
    with atomic_dir(directory) as tmp:
        save_file(hf_state_dict(gpt), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config(gpt), indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps(
            {"bos_token_id": EOT_ID, "eos_token_id": EOT_ID, "pad_token_id": EOT_ID}, indent=2) + "\n")
    return Path(directory)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from tinygpt.sharing.hub import from_pretrained

    p = argparse.ArgumentParser(prog="python -m tinygpt.sharing.export", description=__doc__)
    p.add_argument("checkpoint", help="a TinyGPT checkpoint directory (e.g. out/best) or Hub repo id USER/NAME")
    p.add_argument("out", help="folder to write the transformers model into")
    args = p.parse_args(argv)
    try:
        model, _ = from_pretrained(args.checkpoint)
        export_transformers(model, args.out)
    except ValueError as e:  # CheckpointError is one
        p.exit(2, f"{p.prog}: error: {e}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
