"""One small finished sweep named `digits`, laid out as the README's quickstart (experiments/digits.yaml in a
folder, outputs beside it), run once per test session and shared by the modules that read what a user sees."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import BIN, run_cli, small_experiment

from search.config import Experiment, load

_CACHE: dict[str, "Swept"] = {}


@dataclass(frozen=True)
class Swept:
    """The folder a user ran `slimsweep run experiments/digits.yaml` in, the experiment, and the run's output."""

    folder: Path
    path: Path
    exp: Experiment
    stdout: str


def finished_sweep(factory: pytest.TempPathFactory) -> Swept:
    """Run the sweep the first time it is asked for; later callers get the same one."""
    if "sweep" not in _CACHE:
        folder = factory.mktemp("quickstart")
        (folder / ".venv").symlink_to(BIN.parent)  # the checkout's environment: README commands say .venv/bin/...
        (folder / "experiments").mkdir()
        path = small_experiment(folder / "experiments", name="digits")
        data = yaml.safe_load(path.read_text())
        del data["output_dir"]  # the default: outputs beside the experiment file
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        proc = run_cli("run", "experiments/digits.yaml", "--trials", "4", cwd=folder, timeout=1500)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        exp = load(path).model_copy(update={"output_dir": str(folder / "experiments" / "outputs")})
        _CACHE["sweep"] = Swept(folder, path, exp, proc.stdout + proc.stderr)
    return _CACHE["sweep"]
