"""A generated corpus of hostile experiment files, each run as a user would (`slimsweep run FILE` in a fresh folder):
every one exits 2 with a short message and no traceback, leaves the folder byte-for-byte as it was, and runs no
code it was not asked to run. They all fail before Ray or a teacher starts."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import BIN

MAX_STDERR = 4096


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def experiment(**changes) -> dict:
    """A valid, small experiment; keyword arguments replace top-level sections."""
    data = {
        "name": "bad",
        "task": {"name": "digits", "seed": 0, "teacher": {"epochs": 2}},
        "space": {
            "students": {"teacher": True, "cnn": None},
            "pruning": {"ratio": 0.0},
            "quantization": {"schemes": ["fp32"]},
        },
        "search": {"sampler": "random", "trials": 2, "parallel": 1},
    }
    data.update(changes)
    return data


def nested(data: dict, dotted: str, value) -> dict:
    node = data
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return data


def _yaml(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False)


def _alias_bomb(target: str) -> str:
    """Seven lines of YAML that expand to 9**7 (4.8 million) strings wherever *g is used."""
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, name in zip("abcdef", "bcdefg"):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + f"\n{target}\n"


def _pickle_that_writes(marker: Path) -> bytes:
    """A torch checkpoint whose unpickling writes marker (what a malicious file would do instead)."""
    import io

    import torch

    class Payload:
        def __reduce__(self):
            return (Path.write_text, (marker, "unpickled"))

    buffer = io.BytesIO()
    torch.save({"model": Payload()}, buffer)
    return buffer.getvalue()


def _ray_py(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').write('imported')\nraise SystemExit('a ray.py in the working folder ran')\n"


# Each case: (files to write into the working folder, given the marker's path; text expected in stderr).
Case = tuple[Callable[[Path], dict[str, str | bytes]], str]
CASES: dict[str, Case] = {
    "alias bomb under a top-level key": (lambda m: {"bad.yaml": _alias_bomb("name: *g")}, "YAML anchors"),
    "alias bomb in a knob": (
        lambda m: {"bad.yaml": _alias_bomb("space: {students: {cnn: {width: *g}}}")},
        "YAML anchors",
    ),
    "aliases echoed in an error": (
        lambda m: {
            "bad.yaml": "a: &a [" + ", ".join(['"' + "x" * 200 + '"'] * 9) + "]\n"
            "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nname: bad\nsearch: {sampler: *b}\n"
        },
        "search.sampler",
    ),
    "a 2 MB value": (lambda m: {"bad.yaml": "name: " + "x" * 2_000_000 + "\n"}, "name:"),
    "NaN temperature range": (
        lambda m: {
            "bad.yaml": _yaml(
                nested(experiment(), "space.students.cnn", {"temperature": {"low": float("nan"), "high": 4.0}})
            )
        },
        "space.students.cnn.temperature",
    ),
    "infinite lr": (
        lambda m: {"bad.yaml": _yaml(nested(experiment(), "space.students.cnn", {"lr": float("inf")}))},
        "space.students.cnn.lr",
    ),
    "NaN constraint": (
        lambda m: {"bad.yaml": _yaml(experiment(constraints={"max_accuracy_drop": float("nan")}))},
        "constraints.max_accuracy_drop",
    ),
    "infinite teacher lr": (
        lambda m: {"bad.yaml": _yaml(nested(experiment(), "task.teacher.lr", float("-inf")))},
        "task.teacher.lr",
    ),
    "a trillion trials": (lambda m: {"bad.yaml": _yaml(experiment(search={"trials": 10**12}))}, "search.trials"),
    "a billion in parallel": (lambda m: {"bad.yaml": _yaml(experiment(search={"parallel": 10**9}))}, "search.parallel"),
    "batch of 1e8": (lambda m: {"bad.yaml": _yaml(experiment(target={"batch_size": 10**8}))}, "target.batch_size"),
    "threads as a float 1e8": (lambda m: {"bad.yaml": "name: bad\ntarget: {threads: 1.0e+8}\n"}, "target.threads"),
    "epochs of 10**12": (
        lambda m: {"bad.yaml": _yaml(nested(experiment(), "space.students.cnn", {"epochs": 10**12}))},
        "space.students.cnn.epochs",
    ),
    "a seed past 2**32": (lambda m: {"bad.yaml": _yaml(experiment(search={"seed": 2**70}))}, "search.seed"),
    "output_dir is a file": (
        lambda m: {"bad.yaml": _yaml(experiment(output_dir="taken")), "taken": "a file\n"},
        "output_dir",
    ),
    "output_dir under a file": (
        lambda m: {"bad.yaml": _yaml(experiment(output_dir="taken/out")), "taken": "a file\n"},
        "output_dir",
    ),
    "unreachable tracking URI": (
        lambda m: {"bad.yaml": _yaml(experiment(tracking={"uri": f"http://127.0.0.1:{closed_port()}"}))},
        "tracking.uri",
    ),
    "postgres storage with no driver or server here": (
        lambda m: {"bad.yaml": _yaml(experiment(search={"storage": f"postgresql://u:p@127.0.0.1:{closed_port()}/db"}))},
        "search.storage",
    ),
    "SQLite storage under a file": (
        lambda m: {"bad.yaml": _yaml(experiment(search={"storage": "sqlite:///taken/study.db"})), "taken": "x\n"},
        "search.storage",
    ),
    "tracking store under a file": (
        lambda m: {"bad.yaml": _yaml(experiment(tracking={"uri": "sqlite:///taken/mlflow.db"})), "taken": "x\n"},
        "tracking.uri",
    ),
    "60 unknown keys of 1,000 characters": (
        lambda m: {"bad.yaml": "name: bad\n" + "".join(f"k{i:02d}{'k' * 997}: 1\n" for i in range(60))},
        "more error(s)",
    ),
    "pickled checkpoint under auto": (
        lambda m: {
            "bad.yaml": _yaml(nested(experiment(), "task.teacher", {"checkpoint": "evil.pt"})),
            "evil.pt": _pickle_that_writes(m),
        },
        "format: pickle",
    ),
    "damaged checkpoint, and a ray.py in the working folder": (
        lambda m: {
            "bad.yaml": _yaml(
                nested(experiment(), "task.teacher", {"checkpoint": "broken.pt", "format": "torchscript"})
            ),
            "broken.pt": b"PK\x03\x04 not really a zip",
            "ray.py": _ray_py(m),
        },
        "task.teacher.checkpoint 'broken.pt': not a TorchScript file",
    ),
    "plugin task from the working folder, and a ray.py there": (
        lambda m: {
            "bad.yaml": _yaml(experiment(task={"name": "plugin", "entry": "mytask:make"})),
            "mytask.py": "def make():\n    return 42\n",
            "ray.py": _ray_py(m),
        },
        "task.entry: mytask:make returned int",
    ),
}


def tree(folder: Path) -> dict[str, tuple[int, str]]:
    """Every entry under folder: its mode and, for a file, the hash of its bytes."""
    state = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        state[str(path.relative_to(folder))] = (info.st_mode, digest)
    return state


@pytest.mark.parametrize("name", list(CASES))
def test_a_bad_experiment_file_exits_2_cleanly_and_changes_nothing(tmp_path, name):
    make, says = CASES[name]
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    marker = elsewhere / "marker"
    for file, content in make(marker).items():
        (work / file).write_bytes(content if isinstance(content, bytes) else content.encode())
    before = tree(work)
    # No .pyc files: a plugin module imported from the folder would otherwise (rightly) leave its bytecode there.
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    process = subprocess.Popen(
        [str(BIN / "slimsweep"), "run", "bad.yaml"],
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        _, stderr = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:  # it started a sweep: stop it and what it started, then fail
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
        pytest.fail(f"{name}: not refused; it started a sweep: {stderr[-2000:]}")
    done = subprocess.CompletedProcess(process.args, process.returncode, "", stderr)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert len(done.stderr.encode()) < MAX_STDERR
    assert done.stderr.startswith("error: ") and says in done.stderr, done.stderr[:1000]
    assert tree(work) == before
    assert not marker.exists(), "code the user did not ask to run was run"


def test_a_ray_head_that_answers_nothing_is_refused_before_the_teacher_trains(tmp_path):
    (tmp_path / "bad.yaml").write_text(_yaml(experiment()))
    before = tree(tmp_path)
    address = f"127.0.0.1:{closed_port()}"
    done = subprocess.run(
        [str(BIN / "slimsweep"), "run", "bad.yaml", "--ray-address", address],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.startswith(f"error: --ray-address: '{address}' is not reachable"), done.stderr[:1000]
    assert "Traceback" not in done.stderr and tree(tmp_path) == before
