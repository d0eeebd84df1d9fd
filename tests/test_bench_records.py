"""The benchmarks read a study through search/study.py's typed record: a real SQLite study, as a sweep leaves it."""

from __future__ import annotations

import pytest
from conftest import small_experiment

from benchmarks.realdata import _trial_rows
from search.config import load
from search.study import Baseline, TrialRecord, open_study, record, set_baseline

pytestmark = pytest.mark.fast

TEACHER = {"accuracy": 96.0, "latency_p50_ms": 0.2, "size_mb": 0.04}


def _tell(study, x: float, accuracy: float, p50: float, **info) -> int:
    study.enqueue_trial({"x": x})
    trial = study.ask()
    trial.suggest_categorical("x", [1.0, 2.0, 3.0])
    metrics = {"accuracy": accuracy, "accuracy_drop": 96.0 - accuracy, "latency_p50_ms": p50, "size_mb": 0.01}
    rec = TrialRecord(plan={"x": x}, describe=f"plan x={x}", info=info, metrics=metrics, feasible=True)
    record(study, trial, rec, values=[accuracy, p50, 0.01], constraints={"accuracy_drop": -0.5})
    return trial.number


def test_the_real_data_report_reads_the_front_and_the_budget_from_the_record(tmp_path):
    exp = load(small_experiment(tmp_path, name="bench-records"))
    study = open_study(exp)
    set_baseline(study, Baseline(teacher=TEACHER, input_shape=[1, 8, 8], station={}))
    fast = _tell(study, 1.0, 95.0, 0.05)
    accurate = _tell(study, 2.0, 95.8, 0.1)
    _tell(study, 3.0, 95.9, 0.15, made_by=accurate)  # made on trial 1's way: a candidate, no trial of the budget
    _tell(study, 1.0, 95.0, 0.05)  # the first plan proposed again: a repeat
    front, duplicates, finished, failed = _trial_rows(study, TEACHER)
    assert (duplicates, finished, failed) == (1, 3, 0)
    rows = {r["trial"]: r for r in front}
    assert rows[fast]["plan"] == "plan x=1.0" and rows[fast]["p50_ratio"] == pytest.approx(0.25)
    assert rows[accurate]["accuracy"] == 95.8
