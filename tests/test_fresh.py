"""`run --fresh` deletes only slimsweep's own files of that experiment: it refuses a folder slimsweep did not make,
a study whose driver is alive and a symbolic link, before deleting anything, and never ends in a traceback."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
import pytest
from conftest import run_cli, small_experiment

from evaluators.errors import ConfigError
from search.config import Experiment, load
from search.fresh import MARKER, mark_output, start_over
from search.study import beat, open_study

pytestmark = pytest.mark.fast


def _exp(tmp_path: Path, output_dir: Path | None = None) -> tuple[Path, Experiment]:
    path = small_experiment(tmp_path, name="fresh", **({"output_dir": str(output_dir)} if output_dir else {}))
    return path, load(path)


def _swept_folder(exp: Experiment) -> None:
    """What a sweep leaves: the marker, the study, the teacher and trial files, a hand-over, the front's files."""
    mark_output(exp.out, exp.name)
    open_study(exp)
    (exp.out / "trials").mkdir()
    for name in ("teacher.onnx", "trials/trial-0.onnx", "deployable.onnx", "model_card.json", "pareto.csv"):
        (exp.out / name).write_bytes(b"onnx")


def _has_study(exp: Experiment) -> bool:
    if not (exp.out / "study.db").is_file():  # load_study would make an empty database file
        return False
    try:
        optuna.load_study(study_name=exp.name, storage=exp.storage_url)
        return True
    except KeyError:
        return False


def test_fresh_deletes_a_sweeps_study_and_folder(tmp_path):
    _, exp = _exp(tmp_path)
    _swept_folder(exp)
    said = start_over(exp)
    assert said.startswith("--fresh: deleted the study") and not exp.out.exists()
    assert not (tmp_path / "outputs" / "fresh" / "study.db").exists()


def test_fresh_keeps_what_slimsweep_did_not_write_and_follows_no_link_inside(tmp_path):
    _, exp = _exp(tmp_path)
    _swept_folder(exp)
    elsewhere = tmp_path / "elsewhere.onnx"
    elsewhere.write_bytes(b"a model of the user's own")
    (exp.out / "trials" / "trial-1.onnx").symlink_to(elsewhere)
    (exp.out / "notes.md").write_text("my notes")
    (exp.out / "trials" / "README").write_text("mine too")
    said = start_over(exp)
    assert not _has_study(exp) and not (exp.out / "study.db").exists() and not (exp.out / "teacher.onnx").exists()
    assert sorted(p.name for p in exp.out.rglob("*")) == ["README", "notes.md", "trials"]
    assert elsewhere.read_bytes() == b"a model of the user's own"  # the link went, not what it pointed to
    assert "kept" in said and "notes.md" in said


def test_fresh_refuses_a_folder_slimsweep_did_not_make(tmp_path):
    unrelated = tmp_path / "mine" / "fresh"  # --output-dir mine, where mine/fresh was already the user's
    unrelated.mkdir(parents=True)
    (unrelated / "thesis.tex").write_text("years of work")
    path, exp = _exp(tmp_path, output_dir=tmp_path / "mine")
    with pytest.raises(ConfigError, match="not made by slimsweep"):
        start_over(exp)
    proc = run_cli("run", str(path), "--output-dir", str(tmp_path / "mine"), "--fresh", cwd=tmp_path)
    assert proc.returncode == 2 and "not made by slimsweep" in proc.stderr and "Traceback" not in proc.stderr
    assert (unrelated / "thesis.tex").read_text() == "years of work"


def test_fresh_refuses_a_study_whose_driver_is_alive(tmp_path):
    _, exp = _exp(tmp_path)
    _swept_folder(exp)
    beat(optuna.load_study(study_name=exp.name, storage=exp.storage_url), "other-machine:123:abcd")
    with pytest.raises(ConfigError, match="driver that is alive") as refused:
        start_over(exp)
    assert "other-machine:123:abcd" in str(refused.value)
    assert _has_study(exp) and (exp.out / "teacher.onnx").is_file()  # nothing deleted


def test_fresh_on_a_symlinked_output_folder_deletes_nothing_and_says_why(tmp_path):
    path, exp = _exp(tmp_path)
    real = tmp_path / "real"
    _swept_folder(exp)
    exp.out.rename(real)
    exp.out.symlink_to(real, target_is_directory=True)
    with pytest.raises(ConfigError, match="symbolic link"):
        start_over(exp)
    proc = run_cli("run", str(path), "--fresh", cwd=tmp_path)
    assert proc.returncode == 2 and "symbolic link" in proc.stderr and "Traceback" not in proc.stderr
    assert os.path.islink(exp.out) and (real / "teacher.onnx").is_file() and (real / "study.db").is_file()
    assert _has_study(exp)


def test_a_folder_made_before_the_marker_is_known_by_its_layout(tmp_path):
    _, exp = _exp(tmp_path)
    _swept_folder(exp)
    (exp.out / MARKER).unlink()
    assert start_over(exp).startswith("--fresh: deleted the study") and not exp.out.exists()


def test_the_marker_goes_only_into_a_folder_slimsweep_makes(tmp_path):
    made, existing = tmp_path / "out" / "made", tmp_path / "existing"
    existing.mkdir()
    mark_output(made, "made")
    mark_output(existing, "existing")
    assert (made / MARKER).is_file() and not (existing / MARKER).exists()


def test_fresh_with_mlflow_unreachable_deletes_nothing(tmp_path):
    # The study went first and a traceback followed, leaving runs the next study's trials of the same numbers
    # would be taken for.
    from conftest import free_port

    path = small_experiment(tmp_path, name="fresh", tracking={"uri": f"http://127.0.0.1:{free_port()}"})
    exp = load(path)
    _swept_folder(exp)
    with pytest.raises(ConfigError, match="cannot be reached.*nothing was deleted"):
        start_over(exp)
    assert _has_study(exp) and (exp.out / "trials" / "trial-0.onnx").is_file()
