"""Sharing models: checkpoints on disk, the Hugging Face Hub, transformers export, the shipped model, model cards."""
