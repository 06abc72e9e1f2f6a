"""What the code promises about its own shape: layers import downward only (import-linter's contracts in
pyproject.toml), and nothing compiles our kernels unless serving asks for them."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))


def lint(tree: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([LINT, "--config", str(tree / "pyproject.toml"), "--no-cache"], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    copy = tmp_path_factory.mktemp("tree")
    shutil.copytree(ROOT / "tinygpt", copy / "tinygpt", ignore=shutil.ignore_patterns("__pycache__", "assets"))
    shutil.copy(ROOT / "pyproject.toml", copy)
    return copy


@pytest.mark.slow
@pytest.mark.parametrize("module, line, broken", [
    (None, None, None),
    ("model/gpt.py", "from tinygpt.inference import sampling", "Layers import downward only BROKEN"),
    ("inference/engine.py", "from tinygpt.serving import batching", "Layers import downward only BROKEN"),
    ("kernels/quantize.py", "from tinygpt.inference import engine", "Layers import downward only BROKEN"),
    ("playground/views.py", "from tinygpt.training import trainer", "never loads the training stack BROKEN"),
    ("serving/loading.py", "from tinygpt.training import trainer", "never loads the training stack BROKEN"),
    ("sharing/model_card.py", "from tinygpt.sharing import hub", "No import cycles between modules BROKEN"),
])
def test_the_import_contracts_hold_and_fail_when_broken(tree, module, line, broken):
    """Catches an upward import (the model reaching into inference, the engine into the server's machinery, the
    kernels into the engine), the web app or its serving machinery importing the training stack,
    and a cycle inside a layer (sharing.hub <-> sharing.model_card): each must break a contract."""
    path = tree / "tinygpt" / module if module else None
    before = path.read_text() if path else None
    if path:
        path.write_text(before + f"\n{line}  # added by the test\n")
    try:
        r = lint(tree)
    finally:
        if path:
            path.write_text(before)
    if broken is None:
        assert r.returncode == 0, r.stdout[-2000:]
    else:
        assert r.returncode != 0 and broken in r.stdout, r.stdout[-2000:]


@pytest.mark.slow
def test_collecting_the_tests_and_training_build_no_kernels(token_data, tmp_path):
    """Catches the kernels built at import, at test collection (a module-level load()) or during training (an
    evaluation's sample): none of these may create the kernel cache."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    collect = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
    assert collect.returncode == 0, collect.stdout[-2000:]
    train = subprocess.run([sys.executable, "train.py", "--preset", "tiny", "--max-iters", "4", "--eval-interval",
                            "2", "--block-size", "32", "--data-dir", str(token_data), "--out-dir", str(tmp_path / "out"),
                            "--device", "cpu"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr[-2000:]
    assert "sample (repeated 4-grams" in train.stderr  # the evaluation's sample and its figures, through the engine
    assert not (tmp_path / "cache" / "tinygpt").exists()
