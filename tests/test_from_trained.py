"""Pruning a student the sweep already trained (space.pruning.from_trained): a real small distillation on the digits
task is kept, and a later plan pruning the same student starts from it, training only its recovery epochs; a kept
file that is not a fitting student is ignored, and --fresh deletes the kept students with the rest."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from conftest import small_experiment

from evaluators.latency import LatencyStats
from search import students
from search.config import load
from search.fresh import STUDENTS, _delete_own_files
from search.sweep import prepare
from search.trial import TrialContext, run_trial
from spaces.plan import CompressionPlan
from spaces.pruning_knobs import PruningChoice
from spaces.student_knobs import StudentChoice

pytestmark = pytest.mark.fast

TASK = {"name": "digits", "seed": 0, "teacher": {"epochs": 2}}
SPACE = {
    "students": {"teacher": False, "cnn": {"width": [0.5], "depth": [1], "epochs": 3}},
    "pruning": {"ratio": [0.0, 0.5], "recover_epochs": 1, "from_trained": True},
    "quantization": {"schemes": ["fp32"]},
}
STUDENT = StudentChoice("cnn", width=0.5, depth=1, epochs=3)
TRAINED = CompressionPlan(student=STUDENT)
PRUNED = CompressionPlan(student=STUDENT, pruning=PruningChoice(ratio=0.5, recover_epochs=1))


def _time(model: bytes) -> tuple[LatencyStats, bool]:
    stats = LatencyStats(
        1.0, 1.0, 1.0, 1.0, 1.0, cv=0.0, ci_rel=0.0, throughput=1e3, repeats=10, stable=True, retried=False
    )
    return stats, False


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> TrialContext:
    """The digits task and its teacher, with the kept students' folder that the file's from_trained gives."""
    exp = load(small_experiment(tmp_path_factory.mktemp("from-trained"), name="kept", task=TASK, space=SPACE))
    return prepare(exp)


def test_the_setting_gives_trials_a_folder_and_a_tag_of_the_teacher_and_data(ctx):
    assert ctx.students_dir is not None and Path(ctx.students_dir).name == STUDENTS
    assert len(ctx.students_tag) == 64


def test_a_pruning_plan_of_a_trained_student_starts_from_it_and_trains_only_its_recovery(ctx, tmp_path):
    ctx = dataclasses.replace(ctx, students_dir=str(tmp_path / STUDENTS), measure_unpruned=True)
    trained = run_trial(0, TRAINED, ctx, _time)
    assert trained.error is None and trained.info.epochs_used == 3
    assert len(list((tmp_path / STUDENTS).glob("*.pt"))) == 1  # kept, named by what it was trained from

    pruned = run_trial(1, PRUNED, ctx, _time)
    assert pruned.error is None
    assert pruned.info.student_from == 0
    assert (pruned.info.epochs_used, pruned.info.epochs_planned) == (1, 1)  # its recovery, not 3 + 1
    assert pruned.info.channels_before_pruning == trained.info.channels  # trial 0's student, then pruned
    assert pruned.info.channels < trained.info.channels
    assert pruned.metrics["accuracy"] > 80.0  # a trained student pruned and recovered, not one trained for 1 epoch
    # The student before pruning is measured as trial 0's was (trial 0 may have failed after keeping it); the
    # driver records each plan once.
    assert [m for m in pruned.on_the_way if m.ratio == 0.0]


def test_without_the_setting_every_plan_trains_its_own_student(ctx, tmp_path):
    ctx = dataclasses.replace(ctx, students_dir=None)
    run_trial(0, TRAINED, ctx, _time)
    pruned = run_trial(1, PRUNED, ctx, _time)
    assert pruned.info.student_from is None and pruned.info.epochs_used == 4


def test_a_kept_file_that_is_not_a_fitting_student_is_ignored_and_the_plan_trains(ctx, tmp_path):
    folder = tmp_path / STUDENTS
    ctx = dataclasses.replace(ctx, students_dir=str(folder))
    name = students.key(STUDENT, ctx.students_tag)
    folder.mkdir()
    (folder / f"{name}.pt").write_bytes(b"not a checkpoint")
    garbled = run_trial(1, PRUNED, ctx, _time)
    assert garbled.error is None and garbled.info.student_from is None and garbled.info.epochs_used == 4

    # Tensors of another student under its name: the shapes do not fit, so it trains its own (and counts it).
    torch.save({"state": {"conv.weight": torch.zeros(3, 3)}, "trial": 7}, folder / f"{name}.pt")
    misfit = run_trial(2, PRUNED, ctx, _time)
    assert misfit.error is None and misfit.info.student_from is None
    assert (misfit.info.epochs_used, misfit.info.epochs_planned) == (4, 4)


def test_a_kept_file_holding_code_is_not_run(ctx, tmp_path):
    folder = tmp_path / STUDENTS
    folder.mkdir()
    name = students.key(STUDENT, ctx.students_tag)

    ran = tmp_path / "ran"

    class Boom:
        def __reduce__(self):
            return (ran.touch, ())

    torch.save({"state": Boom(), "trial": 0}, folder / f"{name}.pt")
    assert students.load(folder, name) is None
    assert not ran.exists()  # weights_only: refused, nothing called


def test_fresh_deletes_the_kept_students_and_nothing_else_there(tmp_path):
    folder = tmp_path / STUDENTS
    folder.mkdir()
    (folder / f"{'a' * 32}.pt").write_bytes(b"x")
    (folder / f".{'b' * 32}.k3j_x9.tmp").write_bytes(b"x")
    (folder / "notes.txt").write_text("the user's")
    assert _delete_own_files(tmp_path) == 2
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
