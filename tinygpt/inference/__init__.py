"""Inference: the engine (token ids in, sampled tokens out), sampling, stories as text, and looking inside the
model at one token. It knows nothing of servers (tinygpt.serving) and calls our CPU kernels only through
tinygpt.kernels."""
