"""TinyGPT: a small GPT-2-style language model trained on TinyStories, with a story playground.

Public API:
    GPT, GPTConfig                 the model and its shape (tinygpt.model)
    Tokenizer                      offline GPT-2 BPE (tinygpt.tokenizer)
    generate, GeneratedToken       streaming sampler (tinygpt.sampling)
    save_checkpoint, load_checkpoint, CheckpointError   safetensors + JSON checkpoints
    pick_device, pick_dtype        device and dtype choice
"""
from tinygpt.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from tinygpt.device import pick_device, pick_dtype
from tinygpt.model import GPT, GPTConfig
from tinygpt.sampling import GeneratedToken, generate
from tinygpt.tokenizer import Tokenizer

__all__ = ["GPT", "GPTConfig", "Tokenizer", "generate", "GeneratedToken", "save_checkpoint",
           "load_checkpoint", "CheckpointError", "pick_device", "pick_dtype"]
__version__ = "0.1.0"
