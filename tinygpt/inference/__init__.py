"""Inference: the token-level engine, sampling, reduced-precision serving copies, and stories as text."""
