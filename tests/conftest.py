"""Shared fixtures: a small, fast experiment on the real digits task, and one teacher cache per test session."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

BIN = Path(sys.executable).parent


@pytest.fixture(scope="session", autouse=True)
def teacher_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test (and every CLI subprocess) shares one teacher cache, so the teacher trains once per session."""
    path = tmp_path_factory.mktemp("slimsweep-cache")
    os.environ["SLIMSWEEP_CACHE"] = str(path)
    return path


@pytest.fixture(scope="module", autouse=True)
def own_ray_per_module():
    """Shut down the Ray a module's in-process sweeps started: the cluster test's `ray stop` would kill it."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


def small_experiment(folder: Path, name: str = "tiny", **changes: Any) -> Path:
    """Write a quick experiment (few epochs, few trials) into `folder`; keyword args replace top-level sections."""
    data: dict[str, Any] = {
        "name": name,
        "task": {"name": "digits", "seed": 0, "teacher": {"epochs": 10}},
        "space": {
            "students": {"teacher": True, "cnn": {"width": [0.25, 0.5], "depth": [1], "epochs": 3,
                                                  "temperature": 4.0, "alpha": 0.7}},
            "pruning": {"ratio": [0.0, 0.5], "recover_epochs": 1},
            "quantization": {"schemes": ["fp32", "int8_static_qdq"]},
        },
        "constraints": {"max_accuracy_drop": 5.0},
        "search": {"sampler": "random", "trials": 4, "parallel": 2, "seed": 0},
        "pick": {"max_accuracy_drop": 5.0},
        "output_dir": str(folder / "outputs"),
    }
    data.update(changes)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_cli(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real console script in a fresh process."""
    return subprocess.run([str(BIN / "slimsweep"), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def start_cli(*args: str, cwd: Path) -> subprocess.Popen:
    """Start the console script in its own process group, so the test can stop it like a user would."""
    return subprocess.Popen([str(BIN / "slimsweep"), *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_for(predicate, timeout: float = 300, every: float = 0.5) -> None:
    """Poll until predicate() is true (a bounded loop, never a sleep standing in for a condition)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout} s")
