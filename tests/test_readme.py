"""The README and docs/ as a new user runs them from a fresh clone, without an activated environment: every command
names the environment's own tools, every `slimsweep` command parses with the real CLI, paths are the quickstart's,
and the add-your-own example does what it says."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from search.cli import _parser

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Installed into .venv by `make install`: not on a new user's PATH.
VENV_TOOLS = {"slimsweep", "mlflow", "optuna-dashboard", "ray", "pip", "pytest", "python", "python3", "ruff"}


def blocks(page: Path, language: str = "bash") -> list[str]:
    """The page's fenced blocks of `language`, as written."""
    return re.findall(rf"```{language}\n(.*?)```", page.read_text(), re.S)


def commands(block: str) -> list[list[str]]:
    """Each command of a shell block as words: continuation lines joined, comments and environment settings off."""
    found = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
            words = words[1:]
        if words:
            found.append(words)
    return found


def every_command() -> list[tuple[str, list[str]]]:
    return [(page.name, words) for page in PAGES for block in blocks(page) for words in commands(block)]


def test_the_pages_hold_commands_at_all():
    pages = {page for page, _ in every_command()}
    assert "README.md" in pages and len(pages) >= 3  # the README and the docs it sends users to


@pytest.mark.parametrize("page, words", every_command(), ids=lambda v: " ".join(v)[:60] if isinstance(v, list) else v)
def test_every_command_runs_without_an_activated_environment(page, words):
    tool = words[0]
    assert tool not in VENV_TOOLS, f"{page}: `{' '.join(words)}` needs an activated environment: use .venv/bin/{tool}"
    if tool.startswith(".venv/bin/"):
        assert (ROOT / tool).is_file() or Path(tool).name == "optuna-dashboard", f"{page}: {tool} is not installed"


@pytest.mark.parametrize(
    "page, words",
    [(p, w) for p, w in every_command() if w[0] == ".venv/bin/slimsweep"],
    ids=lambda v: " ".join(v)[:60] if isinstance(v, list) else v,
)
def test_every_slimsweep_command_parses_with_the_real_cli(page, words):
    try:
        _parser().parse_args(words[1:])
    except SystemExit as exc:
        assert exc.code == 0, f"{page}: `{' '.join(words)}` is refused by slimsweep's own parser"


def test_every_store_path_is_where_the_quickstart_writes():
    for page in PAGES:
        for path in re.findall(r"sqlite:///([\w./-]+)", page.read_text()):
            if "digits" in path and not path.startswith("/"):  # relative: the quickstart's, from the checkout
                assert path.startswith("experiments/outputs/digits/"), f"{page.name}: sqlite:///{path}"


def readme_block(tag: str) -> str:
    """The fenced block right after `<!-- tested: TAG -->` in the README, exactly as written."""
    match = re.search(rf"<!-- tested: {re.escape(tag)}\b[^>]*-->\s*```\w*\n(.*?)```", PAGES[0].read_text(), re.S)
    assert match, f"README has no block tagged {tag}"
    return match.group(1)


def test_the_add_your_own_example_sweeps_only_the_new_family_under_its_own_name(tmp_path):
    for tag in ("add-your-own-family", "add-your-own-scheme", "add-your-own-file"):
        block = readme_block(tag)
        (tmp_path / block.splitlines()[0].removeprefix("# ").strip()).write_text(block)  # `# my_students.py`
    (command,) = commands(readme_block("add-your-own-run"))
    env_line = readme_block("add-your-own-run").split(".venv/bin/")[0].split()
    env = dict(os.environ, **dict(pair.split("=", 1) for pair in env_line))
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")  # the folder a user runs it in: the checkout
    done = subprocess.run([*command, "--dry-run"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    resolved = yaml.safe_load("\n".join(x for x in done.stdout.splitlines() if not x.startswith("#")))
    assert resolved["name"] == "mine"  # its own study, MLflow experiment and registered model, not digits'
    students = {k: v for k, v in resolved["space"]["students"].items() if v not in (None, False)}
    assert list(students) == ["mlp"]  # the new family alone, not beside the default students
    assert "fp32_folded" in resolved["space"]["quantization"]["schemes"]
    assert not (tmp_path / "outputs").exists()  # a dry run writes nothing
