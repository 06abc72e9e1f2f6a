"""Tokenize TinyStories (Hub or local files) into train.bin / val.bin for train.py. See --help."""
import argparse
import logging
import os
import sys

from tinygpt.cli import add_dataclass_args, config_from_args
from tinygpt.data.prepare import PrepareConfig, prepare
from tinygpt.data.sources import DataError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Tokenize stories with GPT-2 BPE into uint16 memmaps (train.bin, val.bin) and meta.json. "
                    "With no arguments: roneneldan/TinyStories from the Hugging Face Hub.")
    base = PrepareConfig(offline=os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"))
    add_dataclass_args(parser, PrepareConfig, "data", base)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        prepare(config_from_args(base, args))
    except DataError as e:
        print(f"prepare_data.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prepare_data.py: interrupted; previous outputs are untouched", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
