"""TinyGPT: a small GPT-2-style language model trained on TinyStories, with a story playground.

Public API (imported lazily, so `import tinygpt` and the torch-free data tools start fast):
    GPT, GPTConfig                 the model and its shape (tinygpt.model)
    Tokenizer                      offline GPT-2 BPE (tinygpt.tokenizer)
    generate, GeneratedToken       streaming text generation (tinygpt.story)
    Engine, SamplingParams         the token-level engine and its settings (tinygpt.engine, tinygpt.sampling)
    save_checkpoint, load_checkpoint, CheckpointError   safetensors + JSON checkpoints (tinygpt.checkpoint)
    pick_device, pick_dtype        device and dtype choice (tinygpt.device)
"""
from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "GPT": "model", "GPTConfig": "model", "Tokenizer": "tokenizer", "generate": "story",
    "GeneratedToken": "story", "Engine": "engine", "SamplingParams": "sampling",
    "save_checkpoint": "checkpoint", "load_checkpoint": "checkpoint",
    "CheckpointError": "checkpoint", "pick_device": "device", "pick_dtype": "device",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"tinygpt.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'tinygpt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
