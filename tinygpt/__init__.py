"""TinyGPT: a small GPT-2-style language model trained on TinyStories, with a story playground.

The package by stage: data/ (tokenizer, preparing and loading tokens), model/ (the network), kernels/ (our CPU
kernels and the reduced-precision copies that call them), inference/ (engine, sampling, stories, looking inside),
evaluation/ (loss over data, story loss, story figures), training/, sharing/ (the Hub, export, the shipped
model), serving/ (continuous batching, the compute thread, the warm-up helper, loading a model to serve),
playground/ (the Gradio app).

Public API (imported lazily, so `import tinygpt` and the torch-free data tools start fast):
    GPT, GPTConfig                 the model and its shape (tinygpt.model.gpt)
    Tokenizer                      offline GPT-2 BPE (tinygpt.data.tokenizer)
    generate, GeneratedToken       streaming text generation (tinygpt.inference.story)
    Engine, SamplingParams         the token-level engine and its settings (tinygpt.inference)
    Batcher                        many streams sharing each decode step (tinygpt.serving.batching)
    inspect, Inspection            attention and the logit lens at one token of a story (tinygpt.inference.inspect)
    branch_story                   a story branched at a token: its start kept, a chosen token, the rest new
    save_checkpoint, load_checkpoint, CheckpointError   safetensors + JSON checkpoints (tinygpt.model.checkpoint)
    from_pretrained                a checkpoint directory or a Hub repo id (tinygpt.sharing.hub)
    read_run                       a training run's records, progress and snapshots (tinygpt.evaluation.history)
    pick_device, pick_dtype        device and dtype choice (tinygpt.device)
"""
from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "GPT": "model.gpt", "GPTConfig": "model.gpt", "Tokenizer": "data.tokenizer", "generate": "inference.story",
    "GeneratedToken": "inference.story", "Engine": "inference.engine", "SamplingParams": "inference.sampling",
    "Batcher": "serving.batching", "inspect": "inference.inspect", "Inspection": "inference.inspect",
    "branch_story": "inference.branch", "save_checkpoint": "model.checkpoint", "load_checkpoint": "model.checkpoint",
    "CheckpointError": "model.checkpoint", "from_pretrained": "sharing.hub", "read_run": "evaluation.history",
    "pick_device": "device", "pick_dtype": "device",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"tinygpt.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'tinygpt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
