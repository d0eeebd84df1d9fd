"""The trial record: one typed, versioned layout on real Optuna storage; retries by Optuna's own convention."""

from __future__ import annotations

import pickle

import optuna
import pytest
from conftest import small_experiment
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from evaluators.errors import SlimsweepError
from search.config import load
from search.pareto import candidate
from search.study import (
    RECORD_VERSION,
    TRACEBACK_CHARS,
    VERSION,
    TrialInfo,
    TrialRecord,
    finished,
    marked_interrupted,
    open_study,
    read,
    record,
    requeue,
    retry_history,
    retry_of,
    reusable,
)
from search.trial import MadeOnTheWay, TrialResult

pytestmark = pytest.mark.fast

METRICS = {
    "accuracy": 95.0,
    "accuracy_drop": 0.5,
    "latency_p50_ms": 0.1,
    "latency_p95_ms": 0.12,
    "size_mb": 0.01,
    "params": 1000.0,
}


@pytest.fixture
def exp(tmp_path):
    return load(small_experiment(tmp_path, name="record"))


def _ask(study, x: float) -> optuna.Trial:
    """A trial whose plan is x (one knob with a few choices, as a sweep's space has)."""
    study.enqueue_trial({"x": x})
    trial = study.ask()
    trial.suggest_categorical("x", [1.0, 2.0, 3.0, 4.0, 5.0])
    return trial


def _tell_ok(study, x: float, metrics=METRICS) -> int:
    trial = _ask(study, x)
    rec = TrialRecord(
        plan={"x": x},
        describe=f"x={x}",
        stages={"distill": 1.5},
        info={"latency_cache": "miss"},
        metrics=dict(metrics),
        feasible=True,
    )
    record(
        study,
        trial,
        rec,
        values=[metrics["accuracy"], metrics["latency_p50_ms"], metrics["size_mb"]],
        constraints={"accuracy_drop": -1.0},
    )
    return trial.number


def test_a_record_round_trips_through_sqlite_storage(exp):
    study = open_study(exp)
    number = _tell_ok(study, 1.0)
    stored = optuna.load_study(study_name=exp.name, storage=exp.storage_url).trials[number]
    rec = read(stored)
    assert rec == TrialRecord(
        plan={"x": 1.0},
        describe="x=1.0",
        stages={"distill": 1.5},
        info={"latency_cache": "miss"},
        metrics=METRICS,
        feasible=True,
    )
    assert stored.user_attrs[VERSION] == RECORD_VERSION
    assert candidate(stored).accuracy == 95.0 and candidate(stored).plan == "x=1.0"


def test_a_failure_keeps_its_reason_and_the_end_of_its_traceback(exp):
    study = open_study(exp)
    trial = study.ask()
    long_traceback = "Traceback (most recent call last):\n" + "  frame\n" * 5000 + "ValueError: the loss is nan"
    record(study, trial, TrialRecord(failure="ValueError: the loss is nan", traceback=long_traceback))
    rec = read(study.trials[trial.number])
    assert study.trials[trial.number].state == TrialState.FAIL
    assert rec.failure == "ValueError: the loss is nan"
    assert len(rec.traceback) < TRACEBACK_CHARS + 100 and rec.traceback.endswith("ValueError: the loss is nan")
    assert "truncated" in rec.traceback


def test_a_study_written_before_the_version_stamp_still_loads(exp):
    # The layout a release before the typed record wrote: the same keys, no version, the private interrupted tag.
    exp.out.mkdir(parents=True)
    study = optuna.create_study(
        study_name=exp.name, storage=exp.storage_url, directions=["maximize", "minimize", "minimize"]
    )
    study.set_user_attr("objectives", list(exp.objectives))
    study.set_user_attr("teacher", {"accuracy": 96.0, "latency_p50_ms": 0.2, "size_mb": 0.02})
    old = _ask(study, 1.0)
    for key, value in {
        "plan": {"x": 1.0},
        "describe": "x=1",
        "stages": {},
        "info": {},
        "metrics": METRICS,
        "feasible": True,
    }.items():
        old.set_user_attr(key, value)
    study.tell(old, [95.0, 0.1, 0.01])
    left = study.ask()
    left.set_user_attr("slimsweep.interrupted", True)
    study.tell(left, state=TrialState.FAIL)
    study.enqueue_trial({"x": 1.0}, user_attrs={"slimsweep.retry_of": left.number})

    reopened = open_study(exp)
    assert read(reopened.trials[old.number]).metrics == METRICS
    assert [t.number for t in finished(reopened)] == [old.number]  # the interrupted one does not count
    assert marked_interrupted(reopened.trials[left.number])  # the older release's private tag
    assert retry_of(reopened.get_trials(states=(TrialState.WAITING,))[0]) == left.number
    assert reopened.user_attrs[VERSION] == RECORD_VERSION  # stamped now


def test_a_study_or_trial_from_a_newer_release_is_refused_naming_the_version(exp):
    study = open_study(exp)
    study.set_user_attr(VERSION, RECORD_VERSION + 1)
    with pytest.raises(SlimsweepError, match=f"record version {RECORD_VERSION + 1}"):
        open_study(exp)
    study.set_user_attr(VERSION, RECORD_VERSION)
    trial = study.ask()
    trial.set_user_attr(VERSION, 99)
    study.tell(trial, state=TrialState.FAIL)
    with pytest.raises(SlimsweepError, match=r"trial 0 .*record version 99.*upgrade"):
        read(study.trials[0])


def test_interrupted_trials_are_retried_by_optunas_convention(exp):
    study = open_study(exp)
    done = _tell_ok(study, 1.0)
    left = _ask(study, 3.0)
    assert requeue(study) == [left.number]
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].params == left.params
    # Optuna's own helpers (and optuna-dashboard, which reads the same system attributes) see a retry.
    assert RetryHeartbeatStaleTrialCallback.retried_trial_number(waiting[0]) == left.number
    assert study.trials[left.number].state == TrialState.FAIL
    assert not study.trials[left.number].user_attrs  # no private tag on the failed one
    assert marked_interrupted(study.trials[left.number]) and not marked_interrupted(study.trials[done])
    assert [t.number for t in finished(study)] == [done]

    again = study.ask()  # the queued retry, with its plan
    assert again.params == left.params
    assert requeue(study, [again.number]) == [again.number]  # interrupted a second time
    second = study.get_trials(states=(TrialState.WAITING,))[0]
    assert (
        retry_history(second) == [left.number, again.number] == RetryHeartbeatStaleTrialCallback.retry_history(second)
    )
    assert retry_of(second) == left.number
    assert [t.number for t in finished(study)] == [done]


def test_only_complete_trials_are_reused(exp):
    study = open_study(exp)
    complete = _tell_ok(study, 1.0)
    failed = _ask(study, 5.0)
    record(study, failed, TrialRecord(plan={"x": 5.0}, failure="boom"))
    assert reusable(study, {"x": 1.0}).number == complete
    assert reusable(study, {"x": 5.0}) is None  # the failed plan
    assert reusable(study, {"x": 4.0}) is None
    assert reusable(study, {"x": 1.0, "epochs": 3}) is None  # a fixed setting differs: not the same plan


# Every key a version-1 record's info held, as the worker, the executor and the driver wrote them, plus one this
# release has no field for (an extension's, or a newer release's that kept the version).
OLD_INFO = {
    "ray_node": "f3a9",
    "cores": [2, 3],
    "resources": {"CPU": 1.0},
    "clock": {"submitted": 1.0, "worker_began": 1.5, "worker_ended": 3.0, "received": 3.25},
    "latency_cache": "hit",
    "skipped_training": False,
    "made_by": 4,
    "channels_before_pruning": 96,
    "channels": 48,
    "sparsity": 0.5,
    "machinery_failure": "worker_died",
    "machinery_attempts": ["worker_died: the worker died"],
    "rung": 2,
}


def test_an_older_studys_info_reads_as_typed_fields_and_is_stored_back_without_loss(exp):
    study = open_study(exp)
    old = _ask(study, 2.0)
    # As a release before the typed info stored it: a plain dict under "info".
    for key, value in {"plan": {"x": 2.0}, "describe": "x=2", "info": OLD_INFO, "metrics": METRICS}.items():
        old.set_user_attr(key, value)
    study.tell(old, [95.0, 0.1, 0.01])
    info = read(study.trials[old.number]).info
    assert isinstance(info, TrialInfo)
    assert (info.ray_node, info.cores, info.resources) == ("f3a9", [2, 3], {"CPU": 1.0})
    assert info.clock["received"] == 3.25 and info.latency_cache == "hit" and info.skipped_training is False
    assert (info.made_by, info.channels_before_pruning, info.channels, info.sparsity) == (4, 96, 48, 0.5)
    assert info.machinery_failure == "worker_died" and info.machinery_attempts == ["worker_died: the worker died"]
    assert info.dominated_by is None and info.extra == {"rung": 2}
    assert read(study.trials[old.number]).made_by == 4

    again = _ask(study, 3.0)  # the same info recorded by this release: stored key for key, the unknown one too
    record(study, again, TrialRecord(plan={"x": 3.0}, info=info, failure="boom"))
    assert study.trials[again.number].user_attrs["info"] == OLD_INFO


def test_info_is_typed_where_the_worker_and_the_driver_hand_it_on():
    result = TrialResult(number=3, info={"machinery_failure": "timeout"})  # as the executor builds a timeout
    assert result.info.machinery_failure == "timeout" and result.info.skipped_training is None
    made = MadeOnTheWay(0.0, "fp32", {}, b"", {"channels": 8, "sparsity": 0.0})
    assert made.info.channels == 8
    # Ray hands a result back pickled: the typed info arrives whole.
    result.info.clock = {"worker_began": 1.0}
    back = pickle.loads(pickle.dumps(result))
    assert back.info.clock == {"worker_began": 1.0} and back.info.machinery_failure == "timeout"


def test_the_info_dict_callers_not_yet_moved_to_fields_still_read_and_write_the_fields():
    info = TrialInfo(channels=48)
    info["ray_node"] = "n1"  # as search/executor.py writes it
    info.setdefault("clock", {}).update(submitted=1.0)  # as the driver stamps it
    info["rung"] = 1  # a key with no field: kept aside
    assert info.ray_node == "n1" and info.clock == {"submitted": 1.0} and info.extra == {"rung": 1}
    assert info["channels"] == 48 and info.get("dominated_by") is None
    assert "dominated_by" not in info and "channels" in info  # a key is present when its field is recorded
    assert info == {"channels": 48, "ray_node": "n1", "clock": {"submitted": 1.0}, "rung": 1}
    assert {**info, "made_by": 2}["made_by"] == 2  # spread into a dict, as a model made on the way is built
    assert TrialRecord(info={"dominated_by": 3, "skipped_training": True}).dominated_by == 3
