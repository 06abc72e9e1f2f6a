"""The model: the GPT network (gpt.py), its KV cache, and the chunked output-head loss."""
