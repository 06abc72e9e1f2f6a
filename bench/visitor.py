"""A visitor of the playground, for the serving benches (bench/serve.py, bench/soak.py): `app.py` started on a
free loopback port, then pages opened and stories written through Gradio's own queue protocol, as the page's
JavaScript does.

Not gradio_client: it polls for messages every 50 ms, which would hide what the server does, and its polling
threads take CPU from the server on a 2-core machine. The request's inputs come from the page's own config (the
number, order and defaults of the Generate button's inputs), so a setting added to the page never leaves these
benches sending a request the server rejects.
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Once upon a time"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(checkpoint: str, port: int, env: dict[str, str] | None = None, fast_path: bool = True,
              timeout_s: float = 900.0) -> subprocess.Popen:
    """app.py serving `checkpoint`, once its page answers and (`fast_path`) its fast decode step has taken over
    (after the page opens, or before it where nothing was left to prepare). Its log is `proc.log_path`. Exits the
    bench if the app dies first."""
    log = tempfile.NamedTemporaryFile("w+", prefix="tinygpt-bench-app-", suffix=".log")
    args = [] if fast_path else ["--no-compile"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--checkpoint", checkpoint, "--port", str(port),
                             *args], env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT)
    proc.log, proc.log_path = log, Path(log.name)  # kept open (and so on disk) for the life of the process
    ready = ["TinyGPT playground:"] + (["fast path:"] if fast_path else [])  # either may come first
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:  # a first start builds the kernels and compiles in the background
        if all(line in proc.log_path.read_text() for line in ready):
            return proc
        if proc.poll() is not None:
            sys.exit(f"the app exited: {proc.log_path.read_text()[-2000:]}")
        time.sleep(0.5)
    proc.kill()
    sys.exit(f"the app was not ready ({ready!r}) within {timeout_s:.0f} s")


class Page:
    """What the page's script knows from its config: the Generate event's inputs (with their defaults), the
    page's load event, and the `finish` step that follows a story."""

    def __init__(self, url: str) -> None:
        self.url = url
        config = json.loads(urllib.request.urlopen(url + "config", timeout=30).read())
        components = {c["id"]: c for c in config["components"]}
        deps = config["dependencies"]
        self.generate = next(d for d in deps if d.get("api_name") == "generate")
        self.load = next(d["id"] for d in deps if any(t[1] == "load" for t in d["targets"]))
        self.finish = next(d["id"] for d in deps if d.get("trigger_after") == self.generate["id"])
        self.inputs = [components[i]["props"] for i in self.generate["inputs"]]

    def payload(self, **by_elem_id: object) -> list:
        """The Generate event's data: each input's default as the page shows it, except those named by their
        elem_id (prompt, seed, max-new, ...)."""
        unknown = set(by_elem_id) - {p.get("elem_id") for p in self.inputs}
        if unknown:
            raise ValueError(f"the page has no input {sorted(unknown)}")
        return [by_elem_id.get(p.get("elem_id"), p.get("value")) for p in self.inputs]


async def open_page(http, page: Page) -> str:
    """A visitor's page load as far as the server sees it: the page's load event under a new session (which is
    when Gradio builds the session's state). The session."""
    session = uuid.uuid4().hex
    loaded = await http.post(page.url + "gradio_api/run/predict", json={
        "data": [], "fn_index": page.load, "session_hash": session, "event_data": None, "trigger_id": None})
    loaded.raise_for_status()
    return session


async def write_story(http, page: Page, session: str, seed: int, max_new: int, prompt: str = PROMPT,
                      finish: bool = True) -> dict:
    """The visitor presses Generate: join the queue, read the event stream to the end, then (`finish`) the step
    the page runs after a story (the shaded tokens), so the session keeps what a browser's would. A record with
    ok, and ttft / tok_s / tokens / start / end, or kind ('refused' or 'failed') and error."""
    from gradio_client.utils import apply_diff

    start = time.perf_counter()
    try:
        joined = await http.post(page.url + "gradio_api/queue/join", json={
            "data": page.payload(prompt=prompt, seed=seed, **{"max-new": max_new}),
            "fn_index": page.generate["id"], "session_hash": session, "event_data": None, "trigger_id": None})
        if joined.status_code != 200:
            return {"ok": False, "kind": "refused" if joined.status_code == 503 else "failed", "error": joined.text}
        first = stats = None
        async with http.stream("GET", page.url + "gradio_api/queue/data", params={"session_hash": session}) as resp:
            buffer = b""
            async for chunk in resp.aiter_bytes():
                buffer += chunk
                while b"\n\n" in buffer:
                    line, buffer = buffer.split(b"\n\n", 1)
                    if not line.startswith(b"data:"):
                        continue
                    msg = json.loads(line[5:])
                    if msg["msg"] == "process_generating":
                        last = time.perf_counter()
                        first = first or last
                        data = msg["output"]["data"][1]  # the stats line: in full once, then as diffs
                        stats = data if stats is None else apply_diff(stats, data)
                    elif msg["msg"] == "process_completed":
                        end = time.perf_counter()
                        if not msg.get("success", False):
                            error = str(msg.get("output", {}).get("error"))
                            return {"ok": False, "kind": "refused" if "busy" in error else "failed", "error": error}
                        if finish:
                            done = await http.post(page.url + "gradio_api/run/predict", json={
                                "data": [None], "fn_index": page.finish, "session_hash": session,
                                "event_data": None, "trigger_id": None})
                            done.raise_for_status()
                        tokens = int(re.search(r"\*\*(\d+)\*\* tokens", stats).group(1))
                        return {"ok": True, "ttft": first - start, "tok_s": tokens / (last - first) if last > first
                                else 0.0, "tokens": tokens, "start": start, "end": end}
        return {"ok": False, "kind": "failed", "error": "the event stream ended early"}
    except Exception as e:  # noqa: BLE001 - counted as a failed request
        return {"ok": False, "kind": "failed", "error": f"{type(e).__name__}: {e}"}


def rss_mb(pid: int) -> float:
    """A process's resident memory (Linux's /proc), in MB; 0.0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
