"""The driver's own work between a trial's result and the next submit (issue 20, deliverable 5): what can wait for the
next plans to start does. Shown by the order of the loop's events as a listener sees them, never by a time."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import FixedTrial, FrozenTrial, TrialState
from test_driver_rules import TEACHER_ONLY, StandIn, _run, shared  # noqa: F401 - shared: the rules' sweeps' fixture

from benchmarks import stages
from search.loop import _student_of
from search.study import finished, on_the_way, read, spent
from spaces.plan import sample

pytestmark = pytest.mark.fast


class Order:
    """Listener: what the executor had been given when each trial was told and each made model was recorded."""

    def __init__(self) -> None:
        self.told: dict[int, list[int]] = {}  # told trial -> trials submitted by then
        self.made: list[tuple[int, list[int], bool]] = []  # (parent, submitted by then, mirrored by then)
        self.mirrored: set[int] = set()

    def trial_told(self, loop: Any, told: Any) -> None:
        self.told[told.number] = list(loop.executor.submitted)

    def made_on_the_way(self, loop: Any, number: int) -> None:
        parent = read(loop.study.trials[number]).made_by
        self.made.append((parent, list(loop.executor.submitted), parent in self.mirrored))

    def caught_up(self, loop: Any) -> None:
        self.mirrored |= set(self.told)


def test_the_next_plan_is_submitted_before_the_models_made_on_the_way_are_recorded(tmp_path, shared):  # noqa: F811
    order = Order()
    _, swept, executor = _run(
        tmp_path, shared, StandIn(shared[1], made=True), trials=8, parallel=1, slots=1, listeners=[order]
    )
    assert order.made and len(order.made) == len(on_the_way(swept.study))
    later_runs = 0
    for parent, submitted, mirrored in order.made:
        # A plan submitted after the parent was told is submitted before its made models are recorded...
        after_told = [n for n in executor.submitted if n > parent]
        assert [n for n in submitted if n > parent] == after_told[:1] or not after_told
        later_runs += bool(after_told)
        # ...and its models are recorded (Optuna) before the mirror writes the parent's MLflow run.
        assert not mirrored
    assert later_runs  # some parent was followed by another plan: the order above was seen, not vacuous


class AskAhead:
    """Listener: the loop asks ahead, as it does where trials run beside it (Ray); records, when each trial is told,
    how many trials the study held by then."""

    def __init__(self) -> None:
        self.asked_by_told: dict[int, int] = {}

    def tick(self, loop: Any, asked: bool) -> None:
        loop.ask_ahead = True

    def trial_told(self, loop: Any, told: Any) -> None:
        self.asked_by_told[told.number] = len(loop.study.trials)


def test_the_next_plan_is_asked_while_a_trial_runs_and_the_budget_is_met_exactly(tmp_path, shared):  # noqa: F811
    ahead = AskAhead()
    trial = StandIn(shared[1])
    _, swept, executor = _run(tmp_path, shared, trial, trials=5, parallel=1, slots=1, listeners=[ahead])
    study = swept.study
    order = executor.submitted
    assert len(order) == 5 == len(spent(study)) == len(trial.calls)
    # Each next plan was already an Optuna trial when the one before it was told: its ask was off the result's path.
    assert all(ahead.asked_by_told[done] > nxt for done, nxt in zip(order, order[1:]))
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    assert not [t for t in study.trials if t.state == TrialState.PRUNED]  # none asked past what the budget needed


def test_ctrl_c_queues_the_plan_asked_ahead_again_and_the_resumed_sweep_counts_each_plan_once(tmp_path, shared):  # noqa: F811
    trial = StandIn(shared[1], interrupt_at=2)
    exp, swept, _ = _run(tmp_path, shared, trial, trials=5, parallel=1, slots=1, listeners=[AskAhead()])
    study = swept.study
    assert swept.summary.interrupted and [t.number for t in finished(study)] == [0, 1]
    requeued = sorted(t.system_attrs["failed_trial"] for t in study.get_trials(states=(TrialState.WAITING,)))
    assert requeued == [2, 3]  # the one interrupted and the one asked ahead beside it: both run on resume
    resumed = StandIn(shared[1])
    _, again, _ = _run(tmp_path, shared, resumed, trials=5, parallel=1, slots=1, listeners=[AskAhead()])
    plans = [read(t).describe for t in spent(again.study)]
    assert len(plans) == 5 and not again.study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    assert len(resumed.calls) == 3  # the two queued plans and one more: nothing lost, nothing run twice


class Submitted(AskAhead):
    """Listener: the loop asks ahead (as on Ray); records which trials the executor had been given when each trial
    was told."""

    def __init__(self) -> None:
        super().__init__()
        self.by_told: dict[int, list[int]] = {}

    def trial_told(self, loop: Any, told: Any) -> None:
        self.by_told[told.number] = list(loop.executor.submitted)


@pytest.mark.parametrize("space", ["wide", "teacher only"])
def test_the_next_plan_waits_at_the_executor_unless_a_trial_before_it_may_answer_it(tmp_path, shared, space):  # noqa: F811
    seen = Submitted()
    one_student = dict(TEACHER_ONLY, pruning={"ratio": [0.0, 0.25, 0.5], "recover_epochs": 1})  # six plans
    settings = {"space": one_student} if space == "teacher only" else {}
    exp, swept, executor = _run(
        tmp_path, shared, StandIn(shared[1]), trials=8, parallel=1, slots=1, listeners=[seen], **settings
    )
    plans = {t.number: sample(FixedTrial(t.params), exp.space) for t in spent(swept.study)}
    order = executor.submitted
    queued = held = 0
    for done, nxt in zip(order, order[1:]):
        # A trial of the same student answers its own plan and the models made on its way: its pruning ratio or
        # none, in any scheme. A plan it may answer waits for its result; any other is submitted before that.
        a, b = plans[done], plans[nxt]
        may_answer = _student_of(a) == _student_of(b) and b.pruning.ratio in (0.0, a.pruning.ratio)
        assert (nxt in seen.by_told[done]) == (not may_answer)
        queued += not may_answer
        held += may_answer
    assert queued and (held or space == "wide")  # both ways seen, not vacuous (one student: some plans held)
    if space == "teacher only":
        assert len(order) == 6  # its six plans, each trained once
    assert not swept.study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))


def test_an_attempt_the_machinery_lost_runs_again_behind_the_plan_queued_meanwhile_and_counts_once(tmp_path, shared):  # noqa: F811
    seen = Submitted()
    trial = StandIn(shared[1], lost={1: 1})  # trial 1's first attempt loses its worker
    _, swept, executor = _run(tmp_path, shared, trial, trials=5, parallel=1, slots=1, listeners=[seen])
    order = executor.submitted
    assert order.count(1) == 2 and swept.summary.retried == 1
    # The plan after trial 1 was queued while trial 1 ran, so the second attempt waits behind it.
    assert order.index(2) < len(order) - 1 - order[::-1].index(1)
    study = swept.study
    assert len(spent(study)) == 5 and len(set(order)) == 5  # five plans, each told once
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    assert read(study.trials[1]).info["machinery_attempts"]  # the lost attempt is on its record


def _stamped(number: int, asked: float, clock: dict[str, float], told: float, distill: float) -> FrozenTrial:
    local = lambda s: datetime.fromtimestamp(s).astimezone()  # noqa: E731 - Optuna stamps local time
    return FrozenTrial(
        number=number,
        state=TrialState.COMPLETE,
        value=None,
        values=[1.0],
        datetime_start=local(asked),
        datetime_complete=local(told),
        params={"x": 0},
        distributions={"x": CategoricalDistribution([0])},
        user_attrs={"stages": {"distill": distill}, "info": {"clock": clock}},
        system_attrs={},
        intermediate_values={},
        trial_id=number,
    )


T0 = 1_800_000_000.0


def _after_trial_0(asked: float, clock: dict[str, float], told: float) -> stages.Breakdown:
    """The breakdown of a driver running 0-25 s: trial 0 asked at 0.5 s, submitted at 1 s, on the worker 1.25-9.75 s
    with 8 s of stages, received at 10 s, told at 10.25 s; then trial 1 with 8.5 s of stages, asked, stamped and
    told at these seconds."""
    c0 = {"submitted": T0 + 1, "worker_began": T0 + 1.25, "worker_ended": T0 + 9.75, "received": T0 + 10}
    c1 = {k: T0 + v for k, v in clock.items()}
    trials = [_stamped(0, T0 + 0.5, c0, T0 + 10.25, 8.0), _stamped(1, T0 + asked, c1, T0 + told, 8.5)]
    return stages.breakdown(
        trials, datetime.fromtimestamp(T0, timezone.utc), datetime.fromtimestamp(T0 + 25, timezone.utc)
    )


def test_the_overhead_follows_the_trials_clocks_when_the_next_plan_is_asked_ahead():
    # Trial 1 is asked at 2 s, while trial 0 runs; it is submitted at 10.5 s, after trial 0's result, runs
    # 10.75-19.75 s, received at 20 s, told at 20.5 s.
    c1 = {"submitted": 10.5, "worker_began": 10.75, "worker_ended": 19.75, "received": 20}
    b = _after_trial_0(2, c1, 20.5)
    assert b.driver_side and b.parallel_ok and not b.queued  # asked ahead is not two trials at once
    assert b.between_trials == pytest.approx(0.5) and b.between_parts == pytest.approx({"telling": 0.25, "next": 0.25})
    # Ray: trial 0's result back 0.25, trial 1's dispatch 0.25 and its result back 0.25; the worker 9 - 8.5 outside
    # trial 1's stages.
    assert b.in_trial_other == pytest.approx(0.75 + 0.5)
    assert b.span == pytest.approx(19.0) and b.overhead_share == pytest.approx(1.75 / 19.0)
    # With the first trial's setup, the parts fill the span.
    assert sum(b.stages.values()) + b.overhead + b.first_trial_other == pytest.approx(b.span)
    # The first trial's setup: its dispatch (a worker starts) and its worker outside its stages.
    assert b.first_trial_other == pytest.approx(0.25 + 0.5) and b.before_first == pytest.approx(1.0)


def test_a_trial_queued_behind_the_one_before_costs_only_the_slots_idle_time():
    # Trial 1 is asked at 1.5 s and submitted at 2 s, queued while trial 0 runs on the worker 1.25-9.75 s; it starts
    # there at 9.8 s, as trial 0's result travels back (received at 10 s, told at 10.25 s), and runs to 18.8 s.
    c1 = {"submitted": 2, "worker_began": 9.8, "worker_ended": 18.8, "received": 19}
    b = _after_trial_0(1.5, c1, 19.25)
    assert b.driver_side and b.parallel_ok and b.queued == 1  # queued is not two trials at once either
    assert b.between_trials == 0 and not b.between_parts  # the tell and the next ask ran while trial 1 trained
    # The slot idle 9.75-9.8 s, trial 1's result back 0.2 s, and the worker 9 - 8.5 s outside its stages.
    assert b.in_trial_other == pytest.approx(0.05 + 0.2 + 0.5)
    assert b.span == pytest.approx(18.0) and b.overhead_share == pytest.approx(0.75 / 18.0)
    assert sum(b.stages.values()) + b.overhead + b.first_trial_other == pytest.approx(b.span)
