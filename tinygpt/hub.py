"""The Hugging Face Hub: download a checkpoint by repo id (cached, so later starts work offline).

`python -m tinygpt.hub --help` lists the commands for sharing models and Spaces.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

from tinygpt.checkpoint import CONFIG, WEIGHTS, CheckpointError

log = logging.getLogger(__name__)
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
OPTIONAL_FILES = ("loss.png",)


def is_repo_id(text: str) -> bool:
    """'user/name' that is not an existing local path."""
    return bool(REPO_ID.match(text)) and not Path(text).exists()


def download_checkpoint(repo_id: str, revision: str | None = None) -> Path:
    """Fetch config.json + model.safetensors (+ loss.png if present) of a model repo into the Hub cache
    and return the local snapshot directory. Offline, a cached copy is used."""
    from huggingface_hub import hf_hub_download  # heavy; only when the Hub is used
    from huggingface_hub.errors import EntryNotFoundError

    try:
        paths = [hf_hub_download(repo_id, name, revision=revision) for name in (CONFIG, WEIGHTS)]
    except Exception as e:  # offline with no cache, unknown repo, gated, ...: one clear message
        raise CheckpointError(
            f"could not download {repo_id!r} from the Hugging Face Hub ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}). Check the name and your connection; once "
            "downloaded, it is cached and works offline. Or pass a local checkpoint directory."
        ) from None
    for name in OPTIONAL_FILES:
        try:
            hf_hub_download(repo_id, name, revision=revision)
        except (EntryNotFoundError, Exception):  # optional extras: their absence is fine
            log.debug("%s has no %s", repo_id, name)
    return Path(paths[0]).parent
