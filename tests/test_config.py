"""The experiment-file edge: every mistake a user can make is refused with exit code 2 and one clear line
naming the field, the bad value and what is allowed, before anything is imported, started or written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import experiments
from search.cli import main
from search.config import load

pytestmark = pytest.mark.fast

SHIPPED = Path(experiments.__file__).parent / "digits.yaml"
HEAVY = {"torch", "ray", "optuna", "mlflow", "torch_pruning", "sklearn"}


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """An empty working folder; the teacher cache points into it too, so any write would show up."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SLIMSWEEP_CACHE", str(tmp_path / "cache"))
    return tmp_path


def written(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def refuse(workdir: Path, capsys, text: str, *flags: str) -> tuple[str, Path]:
    """Run `slimsweep run bad.yaml FLAGS`; assert exit code 2 and that nothing but the file exists afterwards."""
    path = workdir / "bad.yaml"
    path.write_text(text)
    assert main(["run", str(path), *flags]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"error: {path}: ")
    assert not (workdir / "outputs").exists()
    assert written(workdir) == ["bad.yaml"]
    return err, path


# (file text, the dotted field named, fragments naming the bad value and what is allowed)
CASES = {
    "unknown top-level key": (
        "name: x\nserch: {trials: 3}\n",
        "serch",
        ["unknown key", "choose one of: name, task, space, objectives", "(did you mean 'search'?)"],
    ),
    "unknown nested key": (
        "name: x\nspace: {students: {cnn: {widht: [0.5]}}}\n",
        "space.students.cnn.widht",
        ["unknown key", "choose one of: width, depth, temperature, alpha, epochs, lr", "(did you mean 'width'?)"],
    ),
    "unknown key in the teacher": (
        "name: x\ntask: {teacher: {epohcs: 3}}\n",
        "task.teacher.epohcs",
        ["unknown key", "width, depth, epochs, lr", "(did you mean 'epochs'?)"],
    ),
    "unknown key in a range": (
        "name: x\nspace: {students: {cnn: {temperature: {low: 2, hihg: 4}}}}\n",
        "space.students.cnn.temperature.hihg",
        ["unknown key", "choose one of: low, high, log", "(did you mean 'high'?)"],
    ),
    "bad sampler": (
        "name: x\nsearch: {sampler: tpee}\n",
        "search.sampler",
        ["'tpee' is not allowed", "choose one of: tpe, nsgaii, random", "(did you mean 'tpe'?)"],
    ),
    "zero trials": (
        "name: x\nsearch: {trials: 0}\n",
        "search.trials",
        ["greater than or equal to 1", "(got 0)"],
    ),
    "pruning ratio above 1": (
        "name: x\nspace: {pruning: {ratio: 1.5}}\n",
        "space.pruning.ratio",
        ["must lie in [0, 1)", "got 1.5"],
    ),
    "pruning ratio above 1 among choices": (
        "name: x\nspace: {pruning: {ratio: [0.0, 0.25, 1.5]}}\n",
        "space.pruning.ratio",
        ["must lie in [0, 1)", "got 1.5"],
    ),
    "alpha above 1": (
        "name: x\nspace: {students: {cnn: {alpha: 1.5}}}\n",
        "space.students.cnn.alpha",
        ["must lie in [0, 1]", "got 1.5"],
    ),
    "alpha range below 0": (
        "name: x\nspace: {students: {cnn: {alpha: {low: -0.1, high: 0.5}}}}\n",
        "space.students.cnn.alpha",
        ["must lie in [0, 1]", "got -0.1"],
    ),
    "negative width": (
        "name: x\nspace: {students: {cnn: {width: [0.5, -0.5]}}}\n",
        "space.students.cnn.width",
        ["width multiplier must be > 0", "got -0.5"],
    ),
    "range with low above high": (
        "name: x\nspace: {students: {cnn: {temperature: {low: 6, high: 2}}}}\n",
        "space.students.cnn.temperature",
        ["low (6.0) must not exceed high (2.0)"],
    ),
    "log range from 0": (
        "name: x\nspace: {students: {cnn: {lr: {low: 0, high: 0.1, log: true}}}}\n",
        "space.students.cnn.lr",
        ["a log range needs low > 0", "got 0.0"],
    ),
    "knob that is not a number": (
        "name: x\nspace: {students: {cnn: {lr: abc}}}\n",
        "space.students.cnn.lr",
        ["expected a number, a list of numbers to choose from, or a range", "(got 'abc')"],
    ),
    "unknown objective": (
        "name: x\nobjectives: [accuracy, sise_mb]\n",
        "objectives",
        ["'sise_mb' is not allowed", "accuracy, latency_p50_ms", "(did you mean 'size_mb'?)"],
    ),
    "unknown quantization scheme": (
        "name: x\nspace: {quantization: {schemes: [fp32, int8_dynamc]}}\n",
        "space.quantization.schemes.1",
        [
            "'int8_dynamc' is not allowed",
            "choose one of: fp32, int8_dynamic, int8_static_qdq",
            "(did you mean 'int8_dynamic'?)",
        ],
    ),
    "bad name": (
        "name: my sweep/1\n",
        "name",
        ["'my sweep/1' is not allowed", "letters, digits, '_', '.' or '-'"],
    ),
    "missing name": (
        "search: {trials: 3}\n",
        "name",
        ["required but missing"],
    ),
    "no student left": (
        "name: x\nspace: {students: {teacher: false, cnn: null}}\n",
        "space.students",
        ["no student left to search", "set teacher: true or give a cnn family"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_field_is_refused_with_one_line_naming_field_value_and_choices(case, workdir, capsys):
    text, field, fragments = CASES[case]
    err, path = refuse(workdir, capsys, text)
    assert err.count("\n") == 1, err  # one line, not a dump of every union member pydantic tried
    assert err.startswith(f"error: {path}: {field}: ")
    for fragment in fragments:
        assert fragment in err


def test_yaml_that_does_not_parse_is_refused_with_its_line(workdir, capsys):
    err, _ = refuse(workdir, capsys, "name: x\nsearch: {trials: [1\n")
    assert "not valid YAML" in err
    assert "line 2" in err


@pytest.mark.parametrize("text, kind", [("- name: x\n- search: {}\n", "list"), ("just words\n", "str")])
def test_file_that_is_not_a_mapping_is_refused(text, kind, workdir, capsys):
    err, _ = refuse(workdir, capsys, text)
    assert f"expected a mapping of settings at the top level, got {kind}" in err


def test_missing_file_is_refused_and_nothing_is_created(workdir, capsys):
    assert main(["run", "nowhere.yaml"]) == 2
    assert capsys.readouterr().err == "error: nowhere.yaml: no such experiment file\n"
    assert written(workdir) == []


@pytest.mark.parametrize(
    "flags, field, fragments",
    [
        (["--trials", "0"], "search.trials", ["greater than or equal to 1", "(got 0)"]),
        (["--parallel", "0"], "search.parallel", ["greater than or equal to 1", "(got 0)"]),
        (["--storage", "study.db"], "search.storage", ["SQLAlchemy URL", "got 'study.db'"]),
    ],
)
def test_invalid_flag_override_names_the_field_it_overrides(flags, field, fragments, workdir, capsys):
    err, path = refuse(workdir, capsys, SHIPPED.read_text(), *flags)
    assert err.startswith(f"error: {path}: {field}: ")
    for fragment in fragments:
        assert fragment in err


def test_console_script_refuses_a_bad_file_before_importing_anything_heavy(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: x\nsearch: {sampler: tpee}\n")
    script = Path(sys.executable).parent / "slimsweep"
    env = dict(os.environ, SLIMSWEEP_CACHE=str(tmp_path / "cache"), PYTHONPROFILEIMPORTTIME="1")
    done = subprocess.run([str(script), "run", "bad.yaml"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    message = [line for line in lines if not line.startswith("import time:")]
    assert message == [
        "error: bad.yaml: search.sampler: 'tpee' is not allowed; choose one of: tpe, nsgaii, random "
        "(did you mean 'tpe'?)"
    ]
    imported = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in lines if line.startswith("import time:")}
    assert "search" in imported  # the profile is real
    assert not imported & HEAVY
    assert written(tmp_path) == ["bad.yaml"]


def test_shipped_experiment_loads_with_defaults_in_the_output_folder(workdir):
    exp = load(SHIPPED)
    assert exp.name == "digits"
    assert exp.objectives == ["accuracy", "latency_p50_ms", "size_mb"]
    assert (exp.search.sampler, exp.search.trials, exp.search.parallel) == ("tpe", 24, 2)
    assert exp.space.students.teacher and exp.space.students.cnn is not None
    assert exp.out == Path("outputs") / "digits"
    assert exp.storage_url == f"sqlite:///{(workdir / 'outputs' / 'digits' / 'study.db').resolve()}"
    assert exp.tracking_uri == f"sqlite:///{(workdir / 'outputs' / 'digits' / 'mlflow.db').resolve()}"
    assert written(workdir) == []  # loading writes nothing


def test_overrides_replace_only_the_named_fields(workdir):
    exp = load(SHIPPED, {"search.trials": 3, "search.parallel": 1, "output_dir": "runs"})
    assert (exp.search.trials, exp.search.parallel) == (3, 1)
    assert (exp.search.sampler, exp.search.seed) == ("tpe", 0)  # the rest of the section is kept
    assert exp.storage_url == f"sqlite:///{(workdir / 'runs' / 'digits' / 'study.db').resolve()}"
    assert exp.tracking_uri == f"sqlite:///{(workdir / 'runs' / 'digits' / 'mlflow.db').resolve()}"


def test_explicit_stores_are_kept(workdir):
    exp = load(SHIPPED, {"search.storage": "sqlite:///elsewhere.db", "tracking.uri": "http://mlflow:5000"})
    assert exp.storage_url == "sqlite:///elsewhere.db"
    assert exp.tracking_uri == "http://mlflow:5000"
