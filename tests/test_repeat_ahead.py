"""A repeat of a plan already answered, drawn while a trial runs, is answered then, off the next trial's path (issue
20, deliverable 5): the plan after it is asked ahead too. Shown by the order of the loop's events, never by a time."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState
from test_driver_rules import TEACHER_ONLY, StandIn, _run, shared  # noqa: F401 - shared: the rules' fixture
from test_loop_overhead import AskAhead

from search.study import read, repeats, spent

pytestmark = pytest.mark.fast


def test_a_repeat_drawn_while_a_trial_runs_is_answered_then_and_the_next_plan_is_asked_ahead(tmp_path, shared):  # noqa: F811
    # Four plans in the space, a budget of four trainings, a sampler that repeats itself: repeats come between them.
    ahead = AskAhead()
    trial = StandIn(shared[1])
    _, swept, executor = _run(
        tmp_path, shared, trial, trials=4, parallel=1, slots=1, space=TEACHER_ONLY, listeners=[ahead]
    )
    study = swept.study
    order = executor.submitted
    assert len(order) == 4 == len(spent(study)) == len(trial.calls)
    answered = {t.number: read(t).reuse_of for t in repeats(study)}
    seen = 0
    for done, nxt in zip(order, order[1:]):
        between = [n for n, of in answered.items() if done < n < nxt]
        if not between or any(answered[n] == done for n in between):
            continue  # no repeat between them, or a repeat of the trial in flight (answered once its result is in)
        seen += 1
        # The repeats between them were answered before `done` was told, and the plan after them asked by then.
        assert ahead.asked_by_told[done] > nxt, (done, between, nxt)
    assert seen  # a repeat came between two trained plans: the order above was seen, not vacuous
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    assert swept.summary.reused == len(answered) == swept.summary.reused_now
