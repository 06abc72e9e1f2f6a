"""Serving: what a server needs beyond the engine. A model loaded for serving (its precision, device and fast
path), continuous batching over one compute thread, the warm-up helper that compiles the decode step in the
background, and a story streamed to an asyncio server. The playground sits above it; inference never imports it."""
