"""The TinyGPT story playground. `python app.py --help`; `gradio app.py` finds the module-level `demo`.

Model: --checkpoint (a directory or a Hub repo USER/NAME), else $TINYGPT_CHECKPOINT, else out/best,
else $TINYGPT_HUB_REPO. With none, the page explains how to get one.
"""
import argparse
import logging
import os

from tinygpt.checkpoint import CheckpointError
from tinygpt.playground import build_demo
from tinygpt.serving import load_for_serving, resolve_source

log = logging.getLogger("app")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Serve the TinyGPT story playground.")
    p.add_argument("--checkpoint", help="checkpoint directory or Hub repo id USER/NAME")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                   help="address to listen on (0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    p.add_argument("--share", action="store_true", help="also make a public gradio.live link")
    p.add_argument("--precision", choices=["fp32", "bf16", "int8", "int4"], default=os.environ.get("TINYGPT_PRECISION"),
                   help="serving precision (default: $TINYGPT_PRECISION, else int8 on CPU, bf16 on CUDA)")
    return p.parse_known_args()[0]  # known only: `gradio app.py` passes its own arguments


def load_demo(args: argparse.Namespace):
    source, loaded = resolve_source(args.checkpoint), None
    if source:
        try:
            loaded = load_for_serving(source, precision=args.precision)
        except CheckpointError as e:
            log.error("%s", e)  # the page then says how to get a working model
    return build_demo(loaded)


logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP request otherwise
ARGS = parse_args()
demo = load_demo(ARGS)

if __name__ == "__main__":
    demo.launch(server_name=ARGS.host, server_port=ARGS.port, share=ARGS.share)
