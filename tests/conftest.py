"""Shared fixtures: a tiny model config and a tokenizer, so every test runs in seconds on a CPU."""
import pytest
import torch

from tinygpt import GPT, GPTConfig, Tokenizer

TINY = GPTConfig(vocab_size=50257, block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.0)


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    return Tokenizer()


@pytest.fixture
def tiny_model() -> GPT:
    torch.manual_seed(0)
    return GPT(TINY).eval()
