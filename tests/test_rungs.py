"""Cheap-then-full through the real loop (search/loop.py, search/rungs.py, search/ledger.py): a real Optuna study on
SQLite and a real MLflow store in tmp_path, trials run by the in-process executor. Most trials are stand-ins whose
learning curves are written here (no training), so each rule is shown by what the study holds; one test trains a
real student and reads its real curve."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import small_experiment
from optuna.trial import TrialState

from search.config import load
from search.inprocess import InProcessExecutor
from search.rungs import Floors, judge
from search.study import read, spent
from search.sweep import prepare, sweep
from search.trial import TrialResult, teacher_figures

pytestmark = pytest.mark.fast

TASK = {"name": "digits", "seed": 0, "teacher": {"epochs": 2}}
FIXED = {"temperature": 4.0, "alpha": 0.7}  # distillation's settings fixed: a plan is its width, depth and scheme
SPACE = {  # 3 widths x 2 depths x 2 schemes: 12 plans, more than any budget here
    "students": {"teacher": False, "cnn": {"width": [0.25, 0.5, 1.0], "depth": [1, 2], "epochs": 4, **FIXED}},
    "pruning": {"ratio": [0.0]},
    "quantization": {"schemes": ["fp32", "int8_static_qdq"]},
}
EPOCHS = 4  # every stand-in plan trains this many epochs


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """The digits task, its teacher (trained once), its ONNX bytes and its accuracy."""
    path = small_experiment(tmp_path_factory.mktemp("rungs-ctx"), name="ctx", task=TASK, space=SPACE)
    ctx = prepare(load(path))
    onnx_bytes, figures = teacher_figures(ctx, lambda m: (_stats(), False))
    return ctx, onnx_bytes, figures["accuracy"]


def _stats():
    from evaluators.latency import LatencyStats

    return LatencyStats(
        1.0, 1.0, 1.0, 1.0, 1.0, cv=0.0, ci_rel=0.0, throughput=1000.0, repeats=10, stable=True, retried=False
    )


class Curves:
    """A trial that trains nothing: `curve(number) -> (final accuracy, accuracy after each rung, p50, size)`; it
    reports at `rungs` (epochs) and stops when told, as search/trial.py does. `kill_after` = (number, rung): the
    driver dies (Ctrl-C) right after that rung's report was answered, the first time only."""

    def __init__(self, onnx_bytes: bytes, curve: Any, rungs: tuple[int, ...] = (1, 2), kill_after=None) -> None:
        self.onnx, self.curve, self.rungs, self.kill_after = onnx_bytes, curve, rungs, kill_after
        self.calls: list[int] = []
        self.reports: list[tuple[int, int, float]] = []

    def __call__(self, number, plan, ctx, time_model, bar, report) -> TrialResult:
        self.calls.append(number)
        final, at_rung, p50, size = self.curve(number)
        for rung, epochs in enumerate(self.rungs):
            acc = at_rung[rung]
            self.reports.append((number, rung, acc))
            figures = {"accuracy": acc, "epochs": epochs, "epochs_planned": EPOCHS, "latency_p50_ms": p50}
            go_on = report(rung, {**figures, "size_mb": size})
            if (number, rung) == self.kill_after:
                self.kill_after = None
                raise KeyboardInterrupt
            if not go_on:
                info = {"stopped_at_rung": rung, "epochs_used": epochs, "epochs_planned": EPOCHS}
                metrics = {"accuracy_so_far": acc, "latency_p50_ms": p50, "size_mb": size}
                return TrialResult(number, metrics=metrics, info=info)
        metrics = {"accuracy": final, "latency_p50_ms": p50, "size_mb": size, "params": 1.0}
        info = {"skipped_training": False, "epochs_used": EPOCHS, "epochs_planned": EPOCHS}
        return TrialResult(number, metrics=metrics, onnx=self.onnx, info=info)


def _run(tmp_path, shared, trial, *, early=None, name="rungs", **search: Any):
    ctx = shared[0]
    settings = {"sampler": "random", "trials": 4, "parallel": 1, "seed": 0, **search}
    settings["early_stopping"] = early if early is not None else {"rungs": [1, 2], "margin_pt": [1.0, 0.5]}
    exp = load(small_experiment(tmp_path, name=name, task=TASK, space=SPACE, search=settings))
    executor = InProcessExecutor(exp.target.spec(), trial=trial, slots=1, timer=lambda m, s: _stats())
    return exp, sweep(exp, executor, ctx, quiet=True, offline=True), executor


def test_a_plan_that_cannot_reach_the_front_stops_at_its_rung_pruned_with_what_stopped_it(tmp_path, shared):
    top = shared[2]  # the teacher's accuracy: the floor is 5 points below it (small_experiment)

    def curve(number):
        if number == 0:  # fast, small and accurate
            return top + 0.5, [top, top], 1.0, 1.0
        return top, [top - 1.2, top - 0.6], 2.0, 2.0  # slower, larger; at rung 0 even +1 pt stays below trial 0

    trial = Curves(shared[1], curve)
    exp, swept, _ = _run(tmp_path, shared, trial, trials=3, budget={"epochs": 6})
    study = swept.study
    stopped = [t for t in study.trials if t.state == TrialState.PRUNED and read(t).info.stopped_at_rung is not None]
    assert stopped, "no plan was stopped at a rung"
    for t in stopped:
        info = read(t).info
        assert info.stopped_at_rung == 0 and info.stopped_by == 0 and info.epochs_used == 1
        assert read(t).metrics["accuracy_so_far"] == pytest.approx(top - 1.2)
        assert "trial 0" in info.stop_reason
        assert not t.values  # no final figures told: nothing to deploy, never on the front
    # Each stopped plan cost its one epoch: trial 0's four, then one per stopped plan up to the six of the budget.
    compute = swept.summary.compute
    assert compute.unit == "epochs" and compute.spent == 4 + len(stopped) <= 6.5
    assert compute.stopped_at_rung == {0: len(stopped)} and compute.epochs_saved == 3 * len(stopped)


def test_a_plan_that_can_still_reach_the_front_goes_on(tmp_path, shared):
    top = shared[2]

    def curve(number):
        if number == 0:
            return top + 0.5, [top, top], 1.0, 1.0
        if number % 2:  # slower and larger, but its rung accuracy plus the margin can still beat trial 0
            return top + 1.0, [top, top + 0.6], 2.0, 2.0
        return top - 2.0, [top - 3.0, top - 2.5], 0.5, 0.5  # less accurate, but faster and smaller: a front member

    trial = Curves(shared[1], curve)
    _, swept, _ = _run(tmp_path, shared, trial, trials=4)
    states = [t.state for t in spent(swept.study) if read(t).reuse_of is None]
    assert states == [TrialState.COMPLETE] * 4
    assert sorted(n for n, _, _ in trial.reports) == sorted(trial.calls * 2) and len(trial.calls) == 4  # each rung


def test_a_plan_below_the_feasibility_floor_stops_without_a_dominator(tmp_path, shared):
    top = shared[2]
    trial = Curves(shared[1], lambda n: (top - 7.0, [top - 8.0, top - 7.5], 1.0 + n, 1.0), rungs=(1, 2))
    _, swept, _ = _run(tmp_path, shared, trial, trials=2)
    first = swept.study.trials[0]
    assert first.state == TrialState.PRUNED
    info = read(first).info
    assert info.stopped_by is None and "feasibility floor" in info.stop_reason and info.epochs_used == 1


def test_a_driver_killed_between_rungs_loses_and_doubles_nothing(tmp_path, shared):
    top = shared[2]
    curve = lambda n: (top - 0.5 * (n % 3), [top - 1.0, top - 0.8], 1.0 + n % 3, 1.0 + n % 3)  # noqa: E731
    trial = Curves(shared[1], curve, kill_after=(1, 0))
    exp, swept, _ = _run(tmp_path, shared, trial, trials=3, early={"rungs": [1, 2], "margin_pt": 50})
    assert swept.summary.interrupted
    # The same command again: the plan killed between its rungs runs whole, once; nothing finished runs again.
    trial.calls.clear()
    _, again, _ = _run(tmp_path, shared, trial, trials=3, early={"rungs": [1, 2], "margin_pt": 50})
    study = again.study
    done = [t for t in spent(study) if t.state == TrialState.COMPLETE and read(t).reuse_of is None]
    plans = [str(sorted(read(t).plan.items())) for t in done]
    assert len(done) == 3 and len(set(plans)) == 3, [(t.number, t.state, read(t).reuse_of) for t in spent(study)]
    killed = study.trials[1]
    assert killed.state == TrialState.FAIL  # its attempt: failed and queued again, its plan run by a new trial
    retried = [t for t in done if t.params == killed.params]
    assert len(retried) == 1
    assert again.summary.compute.spent == 3 * 1.0  # three trainings, the killed attempt not among them
    assert 0 not in trial.calls  # trial 0 finished before the kill: not run again


def test_the_compute_budget_stops_the_sweep_at_the_stated_compute(tmp_path, shared):
    top = shared[2]
    trial = Curves(shared[1], lambda n: (top - 0.1 * n, [top, top], 1.0 + n, 1.0 + n))
    _, swept, executor = _run(tmp_path, shared, trial, trials=24, budget={"epochs": 12}, early={"rungs": []})
    assert len(executor.submitted) == 3 and swept.summary.compute.spent == 12  # three plans of four epochs
    trial = Curves(shared[1], lambda n: (top - 0.1 * n, [top, top], 1.0 + n, 1.0 + n))
    _, swept, executor = _run(
        tmp_path, shared, trial, name="t", trials=24, budget={"trainings": 2}, early={"rungs": []}
    )
    assert len(executor.submitted) == 2 and swept.summary.compute.spent == 2


def test_a_repeat_of_a_stopped_plan_is_stopped_again_at_no_cost(tmp_path, shared):
    top = shared[2]

    def curve(number):
        return (top + 0.5, [top, top], 1.0, 1.0) if number == 0 else (top, [top - 1.2, top], 2.0, 2.0)

    # A two-plan space: every proposal after the first two repeats one of them.
    space = dict(SPACE, students={"teacher": False, "cnn": {"width": [0.25], "depth": [1], "epochs": 4, **FIXED}})
    ctx = shared[0]
    settings = {"sampler": "random", "trials": 3, "parallel": 1, "seed": 0}
    settings["early_stopping"] = {"rungs": [1, 2], "margin_pt": [1.0, 0.5]}
    exp = load(small_experiment(tmp_path, name="repeat", task=TASK, space=space, search=settings))
    trial = Curves(shared[1], curve)
    executor = InProcessExecutor(exp.target.spec(), trial=trial, slots=1, timer=lambda m, s: _stats())
    swept = sweep(exp, executor, ctx, quiet=True, offline=True)
    study = swept.study
    repeats = [t for t in study.trials if read(t).reuse_of is not None]
    assert swept.summary.out_of_plans and repeats  # two plans cannot fill three trainings; repeats cost nothing
    assert len(trial.calls) == 2 and swept.summary.compute.spent == 1 + 0.25
    for t in repeats:
        origin = study.trials[read(t).reuse_of]
        assert t.state == origin.state and (t.values or None) == (origin.values or None)


def test_the_rule_in_numbers():
    floors = Floors(feasible=90.0)
    from search.gate import Candidate

    member = Candidate(7, 95.0, 1.0, 1.0)
    assert judge(85.0, 4.0, 2.0, 2.0, floors, [member]).reason.startswith("85.00% + 4 pt stays below the feas")
    assert judge(90.9, 4.0, 2.0, 2.0, floors, [member]).stopped_by == 7  # 95 > 90.9 + 4: dominated
    assert judge(91.0, 4.1, 2.0, 2.0, floors, [member])  # 95.1 > 95: could still beat it
    assert judge(91.0, 1.0, 0.9, 2.0, floors, [member])  # faster than the member: a front member whatever it ends at
    assert judge(91.0, 1.0, None, None, floors, [member])  # structure unknown before training: floors only
    assert not judge(80.0, 1.0, None, None, floors, [member])
    assert not judge(99.0, 0.0, 1.0, 3.0, Floors(max_size_mb=2.0), [])
    assert not judge(91.0, 1.0, 2.0, 2.0, Floors(feasible=80.0, pick=93.0), [])  # serving the pick


def test_a_real_student_on_its_way_to_the_front_is_never_stopped(tmp_path, shared):
    """A real distilled training (cnn 0.5 wide, 4 epochs, fp32), its curve read at epochs 1 and 2 through the real
    trial and loop. It ends feasible, so as a sweep's first trained plan it is on the front: the default margins
    must let it go on at every rung."""
    space = dict(
        SPACE,
        students={"teacher": False, "cnn": {"width": [0.5], "depth": [1], "epochs": 4, **FIXED}},
        quantization={"schemes": ["fp32"]},
    )
    watch = {"rungs": [1, 3], "margin_pt": 100}  # the default rungs inside 4 epochs; never stops: the curve is read
    settings = {"sampler": "random", "trials": 1, "parallel": 1, "seed": 0, "early_stopping": watch}
    exp = load(small_experiment(tmp_path, name="real", task=TASK, space=space, search=settings))
    seen: list[Any] = []

    class Heard:
        def rung(self, loop, report):
            seen.append(report)
            return True

    ctx = prepare(exp)  # the file's rungs reach the trials through the context
    assert ctx.rungs == (1, 3)
    executor = InProcessExecutor(exp.target.spec(), slots=1, timer=lambda m, s: _stats())
    swept = sweep(exp, executor, ctx, quiet=True, offline=True, listeners=[Heard()])
    t = swept.study.trials[0]
    assert t.state == TrialState.COMPLETE and read(t).info.epochs_used == read(t).info.epochs_planned == 4
    assert [r.rung for r in seen] == [0, 1] and [r.metrics["epochs"] for r in seen] == [1.0, 3.0]
    assert all(0 < r.metrics["accuracy"] <= 100 and "latency_p50_ms" in r.metrics for r in seen)
    floor = shared[2] - exp.constraints.max_accuracy_drop
    assert read(t).metrics["accuracy"] >= floor  # feasible: on the front as the first trained plan
    margins = load(small_experiment(tmp_path, name="d", task=TASK, space=space)).search.early_stopping.margins()
    for r in seen:
        m = r.metrics
        assert judge(m["accuracy"], margins[r.rung], m["latency_p50_ms"], m["size_mb"], Floors(feasible=floor), [])


def test_a_stopped_plan_proposed_again_runs_once_early_stopping_no_longer_stops_it(tmp_path, shared):
    top = shared[2]

    def curve(number):
        return (top + 0.5, [top, top], 1.0, 1.0) if number == 0 else (top, [top - 1.2, top], 2.0, 2.0)

    space = dict(SPACE, students={"teacher": False, "cnn": {"width": [0.25], "depth": [1], "epochs": 4, **FIXED}})
    ctx, stopped_early = shared[0], {"rungs": [1, 2], "margin_pt": [1.0, 0.5]}

    def sweep_with(early, trials):
        settings = {"sampler": "random", "trials": trials, "parallel": 1, "seed": 0, "early_stopping": early}
        exp = load(small_experiment(tmp_path, name="again", task=TASK, space=space, search=settings))
        trial = Curves(shared[1], curve)
        executor = InProcessExecutor(exp.target.spec(), trial=trial, slots=1, timer=lambda m, s: _stats())
        return sweep(exp, executor, ctx, quiet=True, offline=True), trial

    first, _ = sweep_with(stopped_early, 2)
    stopped = [t for t in first.study.trials if t.state == TrialState.PRUNED and read(t).info.stopped_at_rung == 0]
    assert stopped
    # The same study with early stopping off: the stopped plan, proposed again, is trained, not answered stopped.
    again, trial = sweep_with({"rungs": []}, 2)
    trained = [t for t in spent(again.study) if t.state == TrialState.COMPLETE and t.params == stopped[0].params]
    assert trained and trained[0].number in trial.calls


def test_what_a_failed_or_lost_trial_costs():
    from search.budget import trial_cost
    from search.record import TrialRecord

    failed_early = TrialRecord(info={"epochs_used": 0, "epochs_planned": 4})
    assert trial_cost(failed_early, TrialState.FAIL, "epochs") == 1.0  # a failure always uses the budget up
    failed_late = TrialRecord(info={"epochs_used": 3, "epochs_planned": 4})
    assert trial_cost(failed_late, TrialState.FAIL, "epochs") == 3.0
    lost = TrialRecord(info={"clock": {"submitted": 100.0, "received": 160.0}})  # timed out: no worker stamps
    assert trial_cost(lost, TrialState.FAIL, "seconds") == 60.0
    assert trial_cost(lost, TrialState.FAIL, "trainings") == 1.0
    repeat = TrialRecord(info={"epochs_used": 4}, reuse_of=3)
    assert trial_cost(repeat, TrialState.COMPLETE, "epochs") == 0.0
