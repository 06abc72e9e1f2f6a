"""What a Hugging Face Space of the playground receives, staged into a folder: the app, the package (with the
shipped model), a short README card with the Space's front matter, and requirements that take torch from
PyTorch's CPU wheel index (PyPI's Linux torch is the multi-GB CUDA build, useless on a CPU Space).

`stage_space` writes exactly those files, and `sharing.hub.deploy_space` uploads such a folder, so what is
tested locally is what is uploaded.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from tinygpt.fileio import atomic_dir

CPU_INDEX = "--extra-index-url https://download.pytorch.org/whl/cpu"
TRAINING_ONLY = ("datasets", "matplotlib")  # data preparation and loss plots: a Space only serves
PICTURE = "docs/playground.png"
CARD = """{front_matter}
# TinyGPT story playground

A GPT-2-style model written from scratch in PyTorch and trained on
[TinyStories](https://huggingface.co/datasets/roneneldan/TinyStories). Type the start of a story and press
**Generate**: the story appears token by token, and when it ends every token is shaded by the probability the
model gave it; click one to see the alternatives it considered.

![The playground]({picture})

- **Temperature** 0 always picks the most likely token; higher is more surprising. **Top-k** and **top-p** limit
  the choice to the likeliest tokens. The same **seed** gives the same story.
- **Compare** writes two stories side by side from one prompt and seed: two settings, or two models.
- It serves {model}, on this Space's CPU.
"""


class SpaceError(RuntimeError):
    """The Space cannot be staged from here (not the repository root, no front matter); the message says why."""


def front_matter(readme: str) -> str:
    """The README's leading `---` block: the Space's configuration (sdk, sdk_version, app_file, ...)."""
    match = re.match(r"---\n.*?\n---\n", readme, re.S)
    if not match:
        raise SpaceError("README.md has no '---' front matter to configure the Space")
    return match.group(0)


def cpu_requirements(requirements: str) -> str:
    """requirements.txt for serving: PyTorch's CPU index first (its `+cpu` wheels outrank PyPI's CUDA ones), the
    training-only packages and the comments left out."""
    lines = [line.split("#")[0].strip() for line in requirements.splitlines()]
    kept = [line for line in lines if line and re.split(r"[<>=!~\[ ;]", line)[0].lower() not in TRAINING_ONLY]
    return "\n".join([CPU_INDEX, *kept]) + "\n"


def package_files(root: Path) -> list[str]:
    """The package's files (sources, C++ kernels, tokenizer ranks, shipped model), no caches."""
    return sorted(str(p.relative_to(root)) for p in (root / "tinygpt").rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


def stage_space(dest: str | Path, root: str | Path = ".", model_repo: str | None = None) -> list[str]:
    """Write into `dest` (replaced whole, atomically) exactly what the Space receives; return its files."""
    root = Path(root)
    missing = [f for f in ("app.py", "README.md", "requirements.txt", PICTURE) if not (root / f).is_file()]
    if missing or not (root / "tinygpt").is_dir():
        raise SpaceError(f"run this from the TinyGPT repository root: missing {missing or ['tinygpt/']}")
    card = CARD.format(front_matter=front_matter((root / "README.md").read_text(encoding="utf-8")),
                       picture=PICTURE, model=f"the model [{model_repo}](https://huggingface.co/{model_repo})"
                       if model_repo else "the small model that ships with TinyGPT")
    copied = ["app.py", PICTURE, *package_files(root)]
    with atomic_dir(dest) as tmp:
        for name in copied:
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, tmp / name)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        (tmp / "requirements.txt").write_text(
            cpu_requirements((root / "requirements.txt").read_text(encoding="utf-8")), encoding="utf-8")
    return sorted([*copied, "README.md", "requirements.txt"])
