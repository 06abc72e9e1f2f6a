"""The Hugging Face Hub: load a checkpoint by repo id (downloaded once, then cached, so later starts work
offline), push a model with its card, deploy the playground as a Space.

`python -m tinygpt.sharing.hub --help` lists the commands for sharing models and Spaces.
"""
from __future__ import annotations

import argparse
import logging
import re
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from tinygpt.model.checkpoint import CONFIG, WEIGHTS, CheckpointError, find_loss_curve, load_checkpoint
from tinygpt.model.gpt import GPT

log = logging.getLogger(__name__)
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
OPTIONAL_FILES = ("loss.png",)


class HubError(RuntimeError):
    """The Hub cannot be used right now (offline, not logged in, bad repo id); the message says why."""


def is_repo_id(text: str) -> bool:
    """'user/name' that is not an existing local path."""
    return bool(REPO_ID.match(text)) and not Path(text).exists()


def resolve(source: str | Path) -> Path:
    """A local checkpoint directory as it is; a Hub repo id (USER/NAME that is no local path) downloaded."""
    if Path(source).exists():
        return Path(source)
    if not is_repo_id(str(source)):
        raise CheckpointError(f"{source}: no such checkpoint directory, and not a Hub repo id (USER/NAME)")
    return download_checkpoint(str(source))


def from_pretrained(source: str | Path, device: torch.device | str = "cpu") -> tuple[GPT, dict]:
    """load_checkpoint for a local directory or a Hub repo id (USER/NAME), downloaded and cached first."""
    return load_checkpoint(resolve(source), device)


def download_checkpoint(repo_id: str, revision: str | None = None) -> Path:
    """Fetch config.json + model.safetensors (+ loss.png if present) of a model repo into the Hub cache
    and return the local snapshot directory. Offline, a cached copy is used."""
    from huggingface_hub import hf_hub_download  # heavy; only when the Hub is used

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
        except Exception:  # optional extras: their absence is fine
            log.debug("%s has no %s", repo_id, name)
    return Path(paths[0]).parent


def stage_model(checkpoint: str | Path, repo_id: str, staging: Path) -> list[str]:
    """Copy what a model repo holds into `staging`: weights, config, loss curve, model card."""
    from tinygpt.sharing.model_card import render_model_card

    checkpoint = Path(checkpoint)
    for name in (WEIGHTS, CONFIG):
        if not (checkpoint / name).is_file():
            raise CheckpointError(f"{checkpoint / name}: missing; push a checkpoint directory such as out/best")
        shutil.copy2(checkpoint / name, staging / name)
    png = find_loss_curve(checkpoint)
    if png:
        shutil.copy2(png, staging / "loss.png")
    (staging / "README.md").write_text(render_model_card(checkpoint, repo_id, png is not None), encoding="utf-8")
    return sorted(p.name for p in staging.iterdir())


def _api():
    """An authenticated HfApi, or HubError saying how to log in (or that the Hub is unreachable)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import LocalTokenNotFoundError

    api = HfApi()
    try:
        api.whoami()
    except LocalTokenNotFoundError:
        raise HubError("not logged in to the Hugging Face Hub: set HF_TOKEN or run `hf auth login`") from None
    except Exception as e:  # offline, bad token, ...
        raise HubError(f"cannot reach the Hugging Face Hub ({type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else ''}); check your connection and token") from None
    return api


def push(checkpoint: str | Path, repo_id: str, private: bool = False, dry_run: bool = False) -> list[str]:
    """Upload a checkpoint as a model repo; return the uploaded file names. Local files are only read."""
    if not REPO_ID.match(repo_id):
        raise HubError(f"{repo_id!r} is not a repo id; use USER/NAME")
    with tempfile.TemporaryDirectory() as tmp:
        files = stage_model(checkpoint, repo_id, Path(tmp))
        if dry_run:
            return files
        api = _api()
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message="Upload TinyGPT model")
    log.info("uploaded %s to https://huggingface.co/%s", ", ".join(files), repo_id)
    return files


def deploy_space(space_id: str, model_repo: str | None = None, root: str | Path = ".", dry_run: bool = False,
                 stage: str | Path | None = None) -> list[str]:
    """Stage the playground's Space (sharing.space) and upload it as `space_id`, serving `model_repo` (through
    the Space variable TINYGPT_HUB_REPO) or, without one, the shipped model. With `stage`, the files are left
    in that folder and nothing is uploaded; with `dry_run`, they are only listed."""
    from tinygpt.sharing.space import SpaceError, stage_space

    if not REPO_ID.match(space_id) or (model_repo and not REPO_ID.match(model_repo)):
        raise HubError(f"{space_id!r} / {model_repo!r}: Space and model ids look like USER/NAME")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            files = stage_space(stage or Path(tmp) / "space", root, model_repo)
        except SpaceError as e:
            raise HubError(str(e)) from e
        if dry_run or stage:
            return files
        api = _api()
        api.create_repo(space_id, repo_type="space", space_sdk="gradio", exist_ok=True)
        api.upload_folder(repo_id=space_id, repo_type="space", folder_path=str(Path(tmp) / "space"),
                          commit_message="Deploy the TinyGPT playground")
        if model_repo:
            api.add_space_variable(space_id, "TINYGPT_HUB_REPO", model_repo)
        elif "TINYGPT_HUB_REPO" in api.get_space_variables(space_id):  # a redeploy: stop serving the old model
            api.delete_space_variable(space_id, "TINYGPT_HUB_REPO")
    log.info("deployed https://huggingface.co/spaces/%s serving %s", space_id, model_repo or "the shipped model")
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tinygpt.sharing.hub", description="Share TinyGPT on the Hub.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("push", help="upload a checkpoint (weights, config, loss curve, model card)")
    p.add_argument("checkpoint", help="checkpoint directory, e.g. out/best")
    p.add_argument("--repo", required=True, help="model repo id USER/NAME")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--dry-run", action="store_true", help="list what would be uploaded; upload nothing")
    d = sub.add_parser("deploy-space", help="upload the playground as a Gradio Space")
    d.add_argument("space", help="Space id USER/SPACE")
    d.add_argument("--model", help="model repo id USER/NAME the Space serves (default: the shipped model)")
    d.add_argument("--stage", metavar="DIR", help="write the Space's files into DIR; upload nothing")
    d.add_argument("--dry-run", action="store_true", help="list what would be uploaded; upload nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "push":
            files = push(args.checkpoint, args.repo, args.private, args.dry_run)
        else:
            files = deploy_space(args.space, args.model, dry_run=args.dry_run, stage=args.stage)
    except (HubError, CheckpointError) as e:
        sys.stderr.write(f"tinygpt.sharing.hub: error: {e}\n")
        return 2
    done = "staged in " + args.stage if getattr(args, "stage", None) else "would upload" if args.dry_run else "uploaded"
    log.info("%s: %s", done, " ".join(files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
