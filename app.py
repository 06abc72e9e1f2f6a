"""The TinyGPT story playground. `python app.py --help`. (`gradio app.py` also works: it asks for `demo`.)

Model: --checkpoint (a directory or a Hub repo USER/NAME), else $TINYGPT_CHECKPOINT, else out/best,
else $TINYGPT_HUB_REPO, else the small model that ships with the repo. With none, the page says how to get one.
"""
import argparse
import logging
import os
import sys

from tinygpt.kernels.quantize import PRECISIONS
from tinygpt.playground.registry import ModelRegistry
from tinygpt.playground.sessions import keep_sessions_lean
from tinygpt.playground.ui import build_demo
from tinygpt.serving.loading import ServeConfig

log = logging.getLogger("app")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ
    p = argparse.ArgumentParser(description="Serve the TinyGPT story playground.")
    p.add_argument("--checkpoint", help="checkpoint directory or Hub repo id USER/NAME; if it cannot be loaded, "
                   "the app exits (default: $TINYGPT_CHECKPOINT, else out/best, else $TINYGPT_HUB_REPO, else the "
                   "shipped model; a broken one of those is explained on the page)")
    p.add_argument("--compare", nargs="*", metavar="CHECKPOINT", default=_split(env.get("TINYGPT_COMPARE", "")),
                   help="more models (directories or Hub repo ids) visitors may pick in the Compare tab "
                        "(default: $TINYGPT_COMPARE, comma-separated)")
    p.add_argument("--host", default=env.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                   help="address to listen on (0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=int(env.get("GRADIO_SERVER_PORT", "7860")))
    p.add_argument("--share", action="store_true", help="also make a public gradio.live link")
    p.add_argument("--precision", choices=PRECISIONS, default=env.get("TINYGPT_PRECISION"),
                   help="serving precision (default: $TINYGPT_PRECISION, else on CPU int4 (int8 blocks, a 4-bit "
                        "head) for a full-vocabulary model and int8 for a --data-vocab one, the GPU's native "
                        "bf16/fp16 on CUDA); one the device cannot run falls back to the best it can")
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   default=env.get("TINYGPT_COMPILE", "1") != "0",
                   help="never torch.compile the decode step (also $TINYGPT_COMPILE=0): our kernels are built "
                        "before the page opens and the one-pass step serves on x86; elsewhere the step runs "
                        "eagerly (slower tokens)")
    p.add_argument("--concurrency", type=int, default=int(env.get("TINYGPT_CONCURRENCY", "32")),
                   help="stories decoded together, sharing each step (default: $TINYGPT_CONCURRENCY, else 32); "
                        "where the step is compiled, it is compiled once for each power of two up to it")
    p.add_argument("--max-queue", type=int, default=int(env.get("TINYGPT_MAX_QUEUE", "64")),
                   help="requests that may wait beyond those; more are refused with a message "
                        "(default: $TINYGPT_MAX_QUEUE, else 64)")
    p.add_argument("--max-sessions", type=int, default=int(env.get("TINYGPT_MAX_SESSIONS", "2000")),
                   help="visitors' sessions kept in memory, about 60 KB each (a page's settings and its last "
                        "story); past this the oldest is dropped, and its page, if still open, can no longer show "
                        "that story's tokens (default: $TINYGPT_MAX_SESSIONS, else 2000)")
    args = p.parse_known_args(argv)[0]  # known only: `gradio app.py` passes its own arguments
    if args.precision is not None and args.precision not in PRECISIONS:  # from $TINYGPT_PRECISION
        p.error(f"TINYGPT_PRECISION must be one of {', '.join(PRECISIONS)}, got {args.precision!r}")
    if args.concurrency < 1 or args.max_queue < 0 or args.max_sessions < 1:
        p.error(f"--concurrency and --max-sessions must be >= 1 and --max-queue >= 0, got {args.concurrency}, "
                f"{args.max_sessions} and {args.max_queue}")
    return args


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def serve_config(args: argparse.Namespace) -> ServeConfig:
    return ServeConfig(checkpoint=args.checkpoint or os.environ.get("TINYGPT_CHECKPOINT"),
                       hub_repo=os.environ.get("TINYGPT_HUB_REPO"), precision=args.precision, compile=args.compile,
                       concurrency=args.concurrency, max_queue=args.max_queue, compare=tuple(args.compare))


def load_demo(config: ServeConfig):
    # Gradio recomputes its monitoring summary (a pandas DataFrame of up to 10,000 past events) after every
    # event, CPU taken from the model at the end of every story; its dashboard can lag 100 events.
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "100")
    registry = ModelRegistry(config)
    return build_demo(registry), registry


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP request otherwise


def __getattr__(name: str):
    """`gradio app.py` imports this module and reads `demo`: build it then, not at every import."""
    if name == "demo":
        setup_logging()
        return load_demo(serve_config(parse_args()))[0]
    raise AttributeError(name)


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = parse_args(argv)
    demo, registry = load_demo(serve_config(args))
    if args.checkpoint and registry.served is None:  # the operator named this model: stop, and say why
        print(f"app.py: error: {registry.problem_plain}", file=sys.stderr)
        return 2
    # Gradio runs at most max_threads events at once (default 40): every story decoding or waiting takes one.
    # It keeps each visitor's session (made lean: its last story and settings) until --max-sessions newer ones
    # have come: where the server's memory levels off (bench/soak.py --new-visitors)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, quiet=True,
                prevent_thread_lock=True, max_threads=max(40, args.concurrency + args.max_queue + 8),
                state_session_capacity=args.max_sessions)
    keep_sessions_lean(demo)
    host = "localhost" if args.host in ("127.0.0.1", "0.0.0.0") else args.host
    print(f"TinyGPT playground: http://{host}:{demo.server_port}/" + (f"  (public: {demo.share_url})" if
          demo.share_url else "") + "  — Ctrl-C to stop", flush=True)
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
