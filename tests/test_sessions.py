"""Lean sessions (tinygpt.playground.sessions): what the server keeps per visitor."""
import gc
import tracemalloc
import urllib.request

import pytest
from gradio.state_holder import SessionState, StateHolder

from tests.test_app import checkpoint, free_port, registry  # noqa: F401 - fixtures
from tinygpt.inference.story import StorySnapshot
from tinygpt.playground.sessions import LeanSession, keep_sessions_lean
from tinygpt.playground.ui import build_demo


def bytes_per_session(make, demo, n: int = 10) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        sessions = [make(demo) for _ in range(n)]
        gc.collect()
        return (tracemalloc.get_traced_memory()[0] - before) / len(sessions)
    finally:
        tracemalloc.stop()


def test_a_new_visitor_costs_a_small_part_of_gradios_session(registry):  # noqa: F811
    """Catches the page's configuration copied into every session again (0.28 MB a visitor on the real page)."""
    demo = build_demo(registry)
    gradios, lean = bytes_per_session(SessionState, demo), bytes_per_session(LeanSession, demo)
    assert gradios > 100_000  # what Gradio's own session holds for this page: the cost is real
    assert lean < 25_000 and lean < gradios / 8


@pytest.fixture(scope="module")
def launched(registry):  # noqa: F811
    """The page served as app.py serves it: (the demo, its URL)."""
    demo = build_demo(registry)
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    keep_sessions_lean(demo)
    yield demo, f"http://127.0.0.1:{demo.server_port}/"
    demo.close()


@pytest.mark.slow
def test_a_lean_session_keeps_what_a_visit_needs(launched):
    """Catches a lean session that drops a story's snapshot (the shaded tokens, branching and Save read it), or
    one that stores the values Gradio copies for deep links."""
    from gradio_client import Client

    demo, url = launched
    client = Client(url, verbose=False)
    client.submit("Once upon a time", 0.0, 50, 0.95, 6, 3, api_name="/generate").result(timeout=120)
    session = demo.server_app.state_holder.session_data[client.session_hash]
    assert isinstance(session, LeanSession) and not session.config_values
    snapshots = [v for v in session.state_data.values() if isinstance(v, StorySnapshot)]
    assert snapshots and snapshots[-1].n_tokens == 6
    # a deep link (not offered by the page) still answers, with the page's configuration
    with urllib.request.urlopen(f"{url}gradio_api/deep_link?session_hash={client.session_hash}") as r:
        assert r.status == 200 and len(r.read()) > 4


def test_keep_sessions_lean_refuses_a_store_it_was_not_written_for():
    """Catches a Gradio upgrade that changes the session store being silently taken over."""
    class Other(StateHolder):
        pass

    class Launched:
        server_app = type("App", (), {"state_holder": Other()})()

    with pytest.raises(TypeError, match="StateHolder"):
        keep_sessions_lean(Launched())
