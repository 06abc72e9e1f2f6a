"""Inference: the token-level engine, continuous batching, sampling, reduced-precision serving copies, and
stories as text."""
