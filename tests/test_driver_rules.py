"""The fast tier of the driver's rules: the real loop (search/loop.py), a real Optuna study on SQLite and a real
MLflow store in tmp_path, trials run by the in-process executor. The trial itself is a stand-in whose figures
follow from its plan (no training), so each rule is shown by what the study and MLflow hold, never by a speed."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import optuna
import pytest
from conftest import small_experiment
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from search.config import load
from search.dispatch import MACHINERY
from search.inprocess import InProcessExecutor, machinery_failure
from search.study import (
    beat,
    dominated,
    finished,
    needs_sync,
    on_the_way,
    open_study,
    own,
    read,
    repeats,
    spent,
)
from search.sweep import prepare, sweep, trial_path
from search.trial import MadeOnTheWay, TrialResult, teacher_figures

pytestmark = pytest.mark.fast

TEACHER_ONLY = {  # the teacher alone, pruned and quantized: four plans
    "students": {"teacher": True, "cnn": None},
    "pruning": {"ratio": [0.0, 0.5], "recover_epochs": 1},
    "quantization": {"schemes": ["fp32", "int8_static_qdq"]},
}
# The teacher trains for the digits task once per session; these trials never use it beyond its ONNX file.
TASK = {"name": "digits", "seed": 0, "teacher": {"epochs": 2}}
WIDE = {  # more plans than any budget here
    "students": {"teacher": True, "cnn": {"width": [0.25, 0.5, 0.75, 1.0], "depth": [1, 2], "epochs": 1}},
    "pruning": {"ratio": [0.0, 0.25, 0.5], "recover_epochs": 1},
    "quantization": {"schemes": ["fp32", "int8_static_qdq"]},
}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """What every sweep of the file shares: the digits task, its teacher (trained once) and its ONNX bytes."""
    path = small_experiment(tmp_path_factory.mktemp("rules-ctx"), name="ctx", task=TASK, space=TEACHER_ONLY)
    exp = load(path)
    ctx = prepare(exp)
    onnx_bytes, _ = teacher_figures(ctx, lambda m: (_stats(), False))
    return ctx, onnx_bytes


def _stats():
    from evaluators.latency import LatencyStats

    return LatencyStats(
        1.0, 1.0, 1.0, 1.0, 1.0, cv=0.0, ci_rel=0.0, throughput=1000.0, repeats=10, stable=True, retried=False
    )


def _figures(plan: Any) -> tuple[float, float, float]:
    """A plan's accuracy, p50 and size: fixed by its plan, distinct between plans."""
    rnd = random.Random(plan.describe())
    return 90.0 + 5.0 * rnd.random(), 1.0 + rnd.random(), 1.0 + rnd.random()


class StandIn:
    """A trial that trains nothing: `fail` (numbers whose plan raises), `lost` (numbers whose worker dies, how many
    times), `interrupt_at` (the number whose run raises KeyboardInterrupt), `made` (models made on the way)."""

    def __init__(self, onnx_bytes: bytes, **rules: Any) -> None:
        self.onnx, self.calls = onnx_bytes, []
        self.fail: set[int] = rules.get("fail", set())
        self.lost: dict[int, int] = dict(rules.get("lost", {}))
        self.interrupt_at: int | None = rules.get("interrupt_at")
        self.made: bool = rules.get("made", False)
        self.figures = rules.get("figures", _figures)

    def __call__(self, number, plan, ctx, time_model, bar, report) -> TrialResult:
        self.calls.append(number)
        if number == self.interrupt_at:
            raise KeyboardInterrupt
        if self.lost.get(number, 0) > 0:
            self.lost[number] -= 1
            return machinery_failure(number)
        if number in self.fail:
            return TrialResult(number, error="ValueError: this plan breaks", traceback="Traceback ...\nValueError")
        accuracy, p50, size = self.figures(plan)
        if bar and (by := bar.dominator(p50, size)) is not None:
            info = {"skipped_training": True, "dominated_by": by.number, "latency_cache": "miss"}
            return TrialResult(number, metrics={"latency_p50_ms": p50, "size_mb": size}, info=info)
        metrics = {"accuracy": accuracy, "latency_p50_ms": p50, "size_mb": size, "params": 1.0}
        result = TrialResult(number, metrics=metrics, onnx=self.onnx, info={"skipped_training": False})
        if self.made and plan.pruning.ratio > 0:
            made_metrics = dict(metrics, accuracy=accuracy + 0.5, size_mb=size * 2)
            result.on_the_way.append(MadeOnTheWay(0.0, plan.quantization.scheme, made_metrics, self.onnx))
        return result


def _run(
    tmp_path, shared, trial: StandIn, *, name: str = "rules", listeners=(), slots: int = 2, quiet=True, **search: Any
):
    ctx, _ = shared
    settings = {"sampler": "random", "trials": 4, "parallel": 2, "seed": 0, **search}
    space = settings.pop("space", WIDE)
    exp = load(small_experiment(tmp_path, name=name, task=TASK, space=space, search=settings))
    executor = InProcessExecutor(exp.target.spec(), trial=trial, slots=slots, timer=lambda m, s: _stats())
    swept = sweep(exp, executor, ctx, quiet=quiet, listeners=list(listeners))
    return exp, swept, executor


def _trial_runs(exp) -> dict[int, Any]:
    client = MlflowClient(exp.tracking_uri)
    experiment = client.get_experiment_by_name(exp.name)
    runs = client.search_runs([experiment.experiment_id], "tags.`slimsweep.role` = 'trial'", max_results=500)
    return {int(r.data.tags["optuna.trial_number"]): r for r in runs}


def test_the_budget_is_reached_exactly_and_each_trial_has_its_file_and_run(tmp_path, shared):
    trial = StandIn(shared[1])
    exp, swept, executor = _run(tmp_path, shared, trial, trials=5)
    study = swept.study
    assert len(spent(study)) == 5 and swept.summary.finished == 5 and swept.summary.ran_now == 5
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    assert len(executor.submitted) == 5 == len(trial.calls)
    assert all(trial_path(exp, t.number).read_bytes() == shared[1] for t in spent(study))
    assert sorted(_trial_runs(exp)) == sorted(t.number for t in spent(study))


def test_a_failing_plan_is_failed_with_its_reason_and_the_sweep_goes_on(tmp_path, shared):
    exp, swept, _ = _run(tmp_path, shared, StandIn(shared[1], fail={1}), trials=4)
    study = swept.study
    failed = study.trials[1]
    assert failed.state == TrialState.FAIL and read(failed).failure == "ValueError: this plan breaks"
    assert len(spent(study)) == 4 and swept.summary.failed == 1 and swept.summary.failed_kinds == {"plan": 1}
    assert sum(t.state == TrialState.COMPLETE for t in spent(study)) == 3
    assert _trial_runs(exp)[1].data.tags["slimsweep.failure"].startswith("ValueError: this plan breaks")


def test_an_identical_plan_is_answered_from_the_earlier_trial_without_running(tmp_path, shared):
    # Four plans in the space, a budget of five trainings: every proposal after the fourth plan repeats one. A repeat
    # costs nothing, so the four plans train once each and the sweep stops asking (out of plans).
    trial = StandIn(shared[1])
    exp, swept, executor = _run(tmp_path, shared, trial, trials=5, parallel=1, space=TEACHER_ONLY)
    study = swept.study
    reused = repeats(study)
    assert len(spent(study)) == 4 == len(trial.calls) and reused and swept.summary.out_of_plans
    assert swept.summary.compute.spent == 4 and swept.summary.compute.plans_tried == 4
    for t in reused:
        origin = study.trials[read(t).reuse_of]
        assert read(origin).reuse_of is None and read(origin).plan == read(t).plan and t.values == origin.values
        assert t.number not in executor.submitted
    assert swept.summary.reused == len(reused) == swept.summary.reused_now


def test_a_machinery_failure_is_retried_max_retries_times_then_counted(tmp_path, shared):
    # Trial 0's worker dies on every attempt; trial 1's once, then it runs.
    trial = StandIn(shared[1], lost={0: 99, 1: 1})
    exp, swept, executor = _run(tmp_path, shared, trial, trials=3, max_retries=2)
    study = swept.study
    assert executor.submitted.count(0) == 3 and executor.submitted.count(1) == 2
    lost = read(study.trials[0])
    assert study.trials[0].state == TrialState.FAIL and lost.failure.startswith("worker_died: failed 3 attempts")
    assert lost.info[MACHINERY] == "worker_died" and len(lost.info["machinery_attempts"]) == 3
    assert study.trials[1].state == TrialState.COMPLETE and len(read(study.trials[1]).info["machinery_attempts"]) == 1
    assert swept.summary.retried == 3 and swept.summary.failed_kinds == {"worker_died": 1}
    assert len(spent(study)) == 3


def test_the_gate_stops_a_dominated_plan_before_training_at_no_trial_of_the_budget(tmp_path, shared):
    # The first trained plan is the most accurate, fastest and smallest: every later plan is dominated by it.
    def figures(plan):
        first = plan.describe() == seen.setdefault("first", plan.describe())
        return (99.9, 0.1, 0.1) if first else (90.0, 5.0, 5.0)

    seen: dict[str, str] = {}
    trial = StandIn(shared[1], figures=figures)
    exp, swept, _ = _run(tmp_path, shared, trial, trials=2, parallel=1, space=TEACHER_ONLY)
    study = swept.study
    trained = [t for t in spent(study) if t.state == TrialState.COMPLETE and read(t).reuse_of is None]
    assert len(trained) == 1
    stopped = dominated(study)
    assert stopped and all(t.state == TrialState.PRUNED and read(t).dominated_by == trained[0].number for t in stopped)
    assert all(not trial_path(exp, t.number).exists() for t in stopped)
    # Nothing else in the space can reach the front and repeats cost nothing: the second training never happens.
    assert len(spent(study)) == 1 and swept.summary.out_of_plans and swept.summary.dominated == len(stopped)
    assert not set(_trial_runs(exp)) & {t.number for t in stopped}  # no MLflow run for a stopped plan


def test_models_made_on_the_way_are_recorded_outside_the_budget(tmp_path, shared, capsys):
    trial = StandIn(shared[1], made=True)
    exp, swept, _ = _run(tmp_path, shared, trial, trials=4, parallel=1, space=TEACHER_ONLY, quiet=False)
    out = capsys.readouterr().err  # the progress lines, on stderr as a sweep prints them
    study = swept.study
    made = on_the_way(study)
    assert made and swept.summary.on_the_way == len(made)
    # Each of the space's four plans answered once, trained or made on a trial's way (no training of the budget).
    answered = [str(sorted(read(t).plan.items())) for t in spent(study) + made]
    assert len(answered) == len(set(answered)) == 4
    for t in made:
        rec = read(t)
        parent = study.trials[rec.made_by]
        assert rec.plan["pruning.ratio"] == 0.0 and read(parent).plan["pruning.ratio"] > 0
        assert t.state == TrialState.COMPLETE and trial_path(exp, t.number).is_file()
        # The log names it later (the front, the pick): it has a line of its own, after its parent's.
        line = f"trial {t.number:>3} made on trial {rec.made_by}'s way"
        assert line in out and out.index(line) > out.index(f"trial {rec.made_by:>3} done")
    assert {t.number for t in made} <= set(_trial_runs(exp))


class OtherDriverFinishes:
    """Listener: once this driver has nothing in flight, the live driver's trial is still RUNNING (left alone); it
    then ends, as its driver would tell it."""

    def __init__(self, number: int) -> None:
        self.number, self.state_seen = number, None

    def tick(self, loop, asked: bool) -> None:
        if not loop.flights and self.state_seen is None:
            self.state_seen = loop.study.trials[self.number].state
            loop.study.tell(self.number, state=TrialState.FAIL)


def test_a_stale_drivers_running_trial_is_requeued_and_a_live_ones_is_left_alone(tmp_path, shared):
    exp = load(small_experiment(tmp_path, name="drivers", task=TASK, space=WIDE))
    study = open_study(exp)
    now = time.time()
    beat(study, "dead", now=now - 3600, every_s=exp.search.heartbeat_s)
    beat(study, "alive", every_s=3600)
    dead, alive = study.ask(), study.ask()
    own(study, dead, "dead")
    own(study, alive, "alive")
    other = OtherDriverFinishes(alive.number)
    _, swept, _ = _run(tmp_path, shared, StandIn(shared[1]), name="drivers", trials=4, listeners=[other])
    assert swept.summary.requeued == [dead.number]
    assert other.state_seen == TrialState.RUNNING
    study = swept.study
    retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert len(spent(study)) == 4


class MlflowGoesDown:
    """Listener: MLflow is lost once the first trial is told (the tracker's own outage state, as a lost server)."""

    def trial_told(self, loop, told) -> None:
        if not loop.tracker.down:
            loop.tracker.went_down(ConnectionError("the tracking server went away"))


def test_mlflow_lost_mid_sweep_the_sweep_goes_on_and_the_study_is_marked_for_sync(tmp_path, shared):
    exp, swept, _ = _run(tmp_path, shared, StandIn(shared[1]), trials=4, parallel=1, listeners=[MlflowGoesDown()])
    assert len(spent(swept.study)) == 4 and needs_sync(swept.study)
    assert "ConnectionError" in swept.summary.tracking_down
    assert len(_trial_runs(exp)) < 4  # the runs after the outage are the study's to sync


def test_ctrl_c_requeues_the_trials_in_flight_and_loses_no_finished_one(tmp_path, shared):
    trial = StandIn(shared[1], interrupt_at=3)
    exp, swept, _ = _run(tmp_path, shared, trial, trials=6, parallel=2)
    study = swept.study
    assert swept.summary.interrupted and swept.summary.finished == 3  # what the stop line tells the user is kept
    done = [t.number for t in finished(study)]
    assert done == [0, 1, 2]
    assert all(trial_path(exp, n).is_file() for n in done)
    requeued = sorted(t.system_attrs["failed_trial"] for t in study.get_trials(states=(TrialState.WAITING,)))
    assert requeued == [3, 4]  # the one interrupted and the one waiting beside it
    client = MlflowClient(exp.tracking_uri)
    experiment = client.get_experiment_by_name(exp.name).experiment_id
    parent = client.search_runs([experiment], "tags.`slimsweep.role` = 'sweep'")
    assert parent[0].info.status == "KILLED"
    resumed = optuna.load_study(study_name=exp.name, storage=exp.storage_url)
    assert len(spent(resumed)) == 3


class StopAtFirstRung:
    """Listener: hears every rung report; trial 0 is told to stop at its first rung."""

    def __init__(self) -> None:
        self.heard: list[tuple[int, int]] = []

    def rung(self, loop, report) -> bool:
        self.heard.append((report.number, report.rung))
        return report.number != 0


def test_a_running_trial_reports_its_rungs_and_is_stopped_at_one_when_told(tmp_path, shared):
    def rungs(number, plan, ctx, time_model, bar, report):
        reached = 0
        for rung in (1, 2, 3):
            reached = rung
            if not report(rung, {"accuracy": 80.0 + rung}):
                break
        metrics = {"accuracy": 90.0 + reached, "latency_p50_ms": 1.0 + number, "size_mb": 1.0, "params": 1.0}
        return TrialResult(number, metrics=metrics, onnx=shared[1], info={"skipped_training": False})

    listener = StopAtFirstRung()
    # The listener's own stop, not the default rung rule's (its accuracies here are no real curve).
    off = {"rungs": []}
    _, swept, _ = _run(tmp_path, shared, rungs, trials=2, parallel=1, listeners=[listener], early_stopping=off)
    assert listener.heard == [(0, 1), (1, 1), (1, 2), (1, 3)]
    assert swept.study.trials[0].values[0] == 91.0 and swept.study.trials[1].values[0] == 93.0


class BrokenMade(StandIn):
    """A trial whose model made on the way cannot be recorded (its figures lack an accuracy)."""

    def __call__(self, number, plan, ctx, time_model, bar, report) -> TrialResult:
        result = super().__call__(number, plan, ctx, time_model, bar, report)
        for made in result.on_the_way:
            made.metrics.pop("accuracy", None)
        return result


def test_a_model_made_on_the_way_that_cannot_be_recorded_leaves_nothing_running(tmp_path, shared):
    # Left RUNNING by this live driver, it counted as in flight for good: the budget was never met, the sweep hung.
    done: dict[str, Any] = {}

    def go() -> None:
        done["swept"] = _run(
            tmp_path, shared, BrokenMade(shared[1], made=True), trials=4, parallel=1, space=TEACHER_ONLY
        )

    worker = threading.Thread(target=go, daemon=True)
    worker.start()
    worker.join(timeout=300)
    assert "swept" in done, "the sweep did not end"
    study = done["swept"][1].study
    assert len(spent(study)) == 4 and not study.get_trials(states=(TrialState.RUNNING,))
    assert not on_the_way(study)


class LosesLocalFiles:
    """Listener: each told trial's ONNX file leaves this machine and MLflow is lost, so an identical plan proposed
    later cannot be answered from it (as for a driver on another machine whose MLflow run was never written)."""

    def trial_told(self, loop, told) -> None:
        trial_path(loop.exp, told.number).unlink(missing_ok=True)
        if not loop.tracker.down:
            loop.tracker.went_down(ConnectionError("the tracking server went away"))


def test_an_identical_plan_whose_file_cannot_be_had_is_run_not_the_sweep_stopped(tmp_path, shared):
    trial = StandIn(shared[1])
    exp, swept, _ = _run(
        tmp_path, shared, trial, trials=6, parallel=1, space=TEACHER_ONLY, listeners=[LosesLocalFiles()]
    )
    study = swept.study
    assert len(spent(study)) == 6  # four plans, six trials: repeats were proposed, and each ran
    assert all(read(t).reuse_of is None for t in spent(study))
    assert len(trial.calls) == 6


class LateBeats:
    """Listener: this driver's heartbeat reads an hour old at every step (its beats held up by a busy database)."""

    def tick(self, loop, asked: bool) -> None:
        beat(loop.study, loop.driver, now=time.time() - 3600, every_s=loop.exp.search.heartbeat_s)


def test_a_driver_never_requeues_its_own_trials_in_flight(tmp_path, shared):
    trial = StandIn(shared[1])
    exp, swept, _ = _run(tmp_path, shared, trial, trials=6, parallel=2, heartbeat_s=0.5, listeners=[LateBeats()])
    study = swept.study
    assert not swept.summary.requeued and not [t for t in study.trials if "failed_trial" in t.system_attrs]
    assert len(spent(study)) == 6 and len(trial.calls) == 6  # each plan ran once, none dropped as taken over
