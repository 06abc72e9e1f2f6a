"""The README tells users what is true: its test command is the one CI runs, its picture and links exist, the
Space card's Gradio version is the one installed, and every figure in bench/RESULTS.md names its command."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def fenced_commands(text: str) -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    return [line.split("  #")[0].strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_readme_test_command_is_what_ci_runs():
    """Catches the README and .ci/run drifting apart (a test command users run that CI does not)."""
    ci_lines = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    test_command = next(c for c in fenced_commands(README) if "pytest" in c)
    assert ci_lines[-1] == test_command


def test_readme_pictures_and_local_links_exist():
    """Catches a screenshot or a linked file that was moved or never committed."""
    targets = re.findall(r"\]\(([^)#]+)\)", README)
    local = [t for t in targets if not t.startswith(("http://", "https://"))]
    assert local, "the README links no local file (the picture of the page is expected)"
    for target in local:
        assert (ROOT / target).is_file(), target


def test_space_card_gradio_matches_requirements():
    """Catches a Space built with another Gradio than the one the app is tested with."""
    card = re.search(r"^sdk_version: (\S+)$", README, re.M).group(1)
    pinned = re.search(r"^gradio==(\S+)", (ROOT / "requirements.txt").read_text(), re.M).group(1)
    assert card == pinned


def test_results_rows_name_the_bench_command_that_printed_them():
    """Catches a figure in bench/RESULTS.md with no command, or a command naming a script that does not exist."""
    rows = [line for line in (ROOT / "bench/RESULTS.md").read_text().splitlines()
            if line.startswith("|") and not set(line) <= set("|-: ") and "command" not in line.lower()]
    assert rows
    for row in rows:
        scripts = re.findall(r"python (bench/\w+\.py)", row)
        assert scripts, row
        assert all((ROOT / s).is_file() for s in scripts), row
