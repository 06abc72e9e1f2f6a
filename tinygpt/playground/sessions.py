"""What the server keeps for each visitor: Gradio's session without its copy of the page.

Gradio 6 (`gradio.state_holder.SessionState`) builds, for every new session, the configuration of every component
on the page (with three copies of its API schema each), and stores every value the session sends or receives
into it: 180 components here, about 0.28 MB per visitor before a story and more after, kept until
`--max-sessions` newer visitors have come. Gradio keeps that copy only to rebuild the page for a deep link
(`gr.DeepLinkButton`), which this page does not offer: a story is shared by its own link (playground.share).
A lean session keeps what a session needs (the components an update replaced, the `gr.State` values, their
time to live) and nothing of the copy; a deep link asked for anyway gets the page's configuration without the
session's values.
"""
from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
from gradio.state_holder import SessionState, StateHolder


class _Unkept(dict):
    """Takes the configuration Gradio would store per session and keeps none of it."""

    def __setitem__(self, key, value) -> None:
        pass


class LeanSession(SessionState):
    """A Gradio session without its per-session copy of the page's configuration and values."""

    def __init__(self, blocks: gr.Blocks):
        # Gradio's own __init__ (so its fields stay its own), shown no blocks to copy the configuration of
        super().__init__(SimpleNamespace(default_config=blocks.default_config, blocks={}))
        self.config_values = _Unkept()

    def _update_config(self, key: int) -> None:
        pass

    def _update_value_in_config(self, key: int, value) -> None:
        pass

    @property
    def components(self):
        """For a deep link: this session's components as configured, without its values."""
        config = self.blocks_config
        for key, block in config.blocks.items():
            yield config.config_for_block(key, [], block)


class LeanStateHolder(StateHolder):
    """Gradio's session store, making lean sessions."""

    def __getitem__(self, session_id: str) -> SessionState:
        if session_id not in self.session_data:
            self.session_data[session_id] = LeanSession(self.blocks)
        return super().__getitem__(session_id)


def keep_sessions_lean(demo: gr.Blocks) -> None:
    """From now on each new visitor of the launched `demo` gets a lean session. Gradio makes its session store
    inside `launch()`, so it is changed in place (nothing in it is lost)."""
    holder = demo.server_app.state_holder
    if type(holder) is not StateHolder:  # a Gradio whose store is not the one this was written for
        raise TypeError(f"expected gradio's StateHolder, got {type(holder).__name__}")
    holder.__class__ = LeanStateHolder
