"""Latency first against the front (search/gate.py): plans slower and larger than a model already at the top of
the accuracy range are probed untrained, stopped, told to Optuna as PRUNED, and cost no trial."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from conftest import small_experiment, sweep_here
from mlflow.tracking import MlflowClient

import search.loop
from evaluators.latency import TimingSettings, measure
from search.config import load
from search.gate import Bar, Candidate, accuracy_noise_pt, bar
from search.study import dominated, finished, read
from search.sweep import MAX_ASKS_PER_TRIAL, prepare, trial_path
from search.trial import run_trial
from spaces.plan import CompressionPlan

TEACHER_ONLY = {
    "students": {"teacher": True, "cnn": None},  # the teacher alone: pruned and quantized
    "pruning": {"ratio": [0.0, 0.5], "recover_epochs": 1},
    "quantization": {"schemes": ["fp32", "int8_static_qdq"]},
}


def test_the_noise_is_the_standard_error_of_a_binomial_accuracy():
    # A second computation: the spread of accuracies measured on many simulated validation sets.
    rng = np.random.default_rng(0)
    for accuracy, n in ((98.5, 2000), (90.0, 400), (60.0, 10_000)):
        measured = 100.0 * rng.binomial(n, accuracy / 100.0, size=40_000) / n
        assert accuracy_noise_pt(accuracy, n) == pytest.approx(measured.std(), rel=0.03)
    assert accuracy_noise_pt(100.0, 400) > 0  # a perfect score still has a noise floor


def test_the_bar_holds_the_candidates_within_one_standard_error_of_the_best():
    noise = accuracy_noise_pt(99.0, 2000)
    found = [Candidate(1, 99.0, 0.5, 1.0), Candidate(2, 99.0 - noise / 2, 0.2, 0.5), Candidate(3, 95.0, 0.01, 0.01)]
    b = bar(found, teacher_accuracy=98.0, n_val=2000)
    assert [c.number for c in b.members] == [1, 2] and b.accuracy_floor == pytest.approx(99.0 - noise)
    # The teacher's accuracy counts as measured: far below it, no candidate sets the bar.
    assert not bar([Candidate(1, 80.0, 0.1, 0.1)], teacher_accuracy=99.0, n_val=2000)


def test_a_plan_is_dominated_only_when_a_member_is_both_as_fast_and_as_small():
    b = Bar((Candidate(1, 99.0, 0.5, 1.0), Candidate(2, 99.0, 0.2, 2.0)), 98.0)
    assert b.dominator(0.6, 2.5).number == 2  # both qualify: the fastest is named
    assert b.dominator(0.6, 1.5).number == 1
    assert b.dominator(0.1, 5.0) is None  # faster than every member
    assert b.dominator(5.0, 0.5) is None  # smaller than every member
    # The member's own structure (a twin within timing noise, the same size) is left to its training.
    assert b.dominator(0.5 * 1.02, 1.0) is None and b.dominator(0.5 * 1.2, 1.0).number == 1
    assert not Bar()


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    path = small_experiment(tmp_path_factory.mktemp("gate-trial"), name="gate-trial", space=TEACHER_ONLY)
    exp = load(path)
    return exp, prepare(exp)


def _plan(exp) -> CompressionPlan:
    from optuna.trial import FixedTrial

    from spaces.plan import sample

    return sample(FixedTrial({"pruning.ratio": 0.5, "quantization.scheme": "int8_static_qdq"}), exp.space)


def _time(model: bytes):
    return measure(model, TimingSettings(max_seconds=0.5)), False


def test_a_trial_under_a_bar_it_cannot_pass_is_probed_and_not_trained(context):
    exp, ctx = context
    # A member at 0 ms and 0 MB: no structure is faster or smaller, whatever this machine measures.
    result = run_trial(7, _plan(exp), ctx, _time, Bar((Candidate(3, 99.0, 0.0, 0.0),), 98.0))
    assert result.ok and result.info["dominated_by"] == 3 and result.info["skipped_training"]
    assert "latency_first" in result.stages and "prune" not in result.stages and "export" not in result.stages
    assert result.onnx is None and "accuracy" not in result.metrics
    assert result.metrics["latency_p50_ms"] > 0 and result.metrics["size_mb"] > 0


def test_a_trial_under_a_bar_it_passes_is_trained_as_usual(context):
    exp, ctx = context
    result = run_trial(7, _plan(exp), ctx, _time, Bar((Candidate(3, 99.0, float("inf"), float("inf")),), 98.0))
    assert result.ok and "dominated_by" not in result.info and not result.info["skipped_training"]
    assert "prune" in result.stages and result.onnx and "accuracy" in result.metrics


def test_a_sweep_stops_dominated_plans_before_training_and_they_cost_no_trial(tmp_path, monkeypatch):
    # Every trained trial is taken as faster and smaller than any structure (its figures set to zero), so which
    # plan is dominated depends on no measured latency: every new plan after the first trained one is.
    def zero_bar(found, teacher_accuracy, n_val):
        return Bar(tuple(Candidate(c.number, c.accuracy, 0.0, 0.0) for c in found), 0.0)

    monkeypatch.setattr(search.loop, "bar", zero_bar)  # the loop's gate step builds the bar
    path = small_experiment(
        tmp_path,
        name="gated",
        # Models made on the way off: here the first trained plan alone is to stand in every other plan's way.
        space={**TEACHER_ONLY, "quantization": {**TEACHER_ONLY["quantization"], "on_the_way": False}},
        constraints={"max_accuracy_drop": 50.0},
        search={"sampler": "random", "trials": 3, "parallel": 1, "seed": 0},
    )
    exp = load(path)
    # The driver's loop on the real trial in this process (search/inprocess.py): the gate is the loop's and the
    # trial's, not Ray's, and no pick is looked at here; Ray's start and the pick's timing cost seconds of CPU.
    study = sweep_here(exp)
    trained = [t for t in finished(study) if read(t).reuse_of is None]
    assert len(trained) == 1, "only the first plan had no bar to pass"
    first = trained[0].number
    pruned = dominated(study)
    assert pruned, "the random sampler proposes four plans; at least one other than the first is drawn"
    for t in pruned:
        rec = read(t)
        assert t.state == optuna.trial.TrialState.PRUNED and rec.dominated_by == first and "accuracy" not in rec.metrics
        assert not trial_path(exp, t.number).exists()  # nothing deployable was made
        if rec.reuse_of is None:
            assert "latency_first" in rec.stages and "distill" not in rec.stages
        else:
            assert not rec.stages  # proposed again: answered from the first verdict, not probed again
    # The budget counts the trained trial and its identical repeats; the dominated ones cost nothing, up to the cap.
    assert len(finished(study)) == 3 or len(study.trials) == MAX_ASKS_PER_TRIAL * 3
    assert all(t.params != trained[0].params for t in pruned)
    client = MlflowClient(exp.tracking_uri)
    experiment = client.get_experiment_by_name(exp.name)
    runs = client.search_runs([experiment.experiment_id], "tags.`slimsweep.role` = 'trial'", max_results=500)
    # One MLflow run per finished trial; the dominated ones are counted on the parent, not logged one by one.
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in runs) == sorted(t.number for t in finished(study))
    parent = client.search_runs([experiment.experiment_id], "tags.`slimsweep.role` = 'sweep'")[0]
    assert parent.data.metrics["trials_dominated"] == len(pruned)
