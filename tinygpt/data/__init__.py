"""Data: the GPT-2 tokenizer, story readers, preparing token files, and reading windows from them."""
