"""Ctrl-C in the middle of the driver's bookkeeping: a trial just asked, or just back and not yet told, is never left
RUNNING with no driver to queue it again (a clean-clone run of the Ctrl-C resume test once found one)."""

from __future__ import annotations

import os
import signal

import pytest
from conftest import small_experiment
from optuna.trial import TrialState
from test_driver_rules import TASK, WIDE, StandIn, _run, _stats, shared  # noqa: F401 - shared: the rules' fixture
from test_loop_overhead import AskAhead

import search.loop
from search.config import load
from search.inprocess import InProcessExecutor
from search.study import finished, interrupted
from search.sweep import sweep

pytestmark = pytest.mark.fast


def _ctrl_c_on_call(wrapped, call: int):
    """`wrapped`, which sends this process a SIGINT (as Ctrl-C does) in its `call`-th call, before it returns."""
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            os.kill(os.getpid(), signal.SIGINT)
        return wrapped(*args, **kwargs)

    return wrapper


def _left(study) -> tuple[list[int], list[int]]:
    running = [t.number for t in study.get_trials(states=(TrialState.RUNNING,))]
    queued = sorted(t.system_attrs["failed_trial"] for t in study.get_trials(states=(TrialState.WAITING,)))
    return running, queued


def test_ctrl_c_while_a_plan_is_drawn_queues_that_plan_again(tmp_path, shared, monkeypatch):  # noqa: F811
    # The third plan's sampling is interrupted: its Optuna trial exists, the loop does not hold it yet.
    monkeypatch.setattr(search.loop, "sample", _ctrl_c_on_call(search.loop.sample, 3))
    _, swept, _ = _run(tmp_path, shared, StandIn(shared[1]), trials=5, parallel=1, slots=1, listeners=[AskAhead()])
    running, queued = _left(swept.study)
    assert swept.summary.interrupted
    assert not running
    assert 2 in queued  # the plan being drawn runs when the sweep resumes
    assert set(queued) == set(interrupted(swept.study))


def test_ctrl_c_while_a_result_is_told_keeps_that_result(tmp_path, shared, monkeypatch):  # noqa: F811
    # The second result's ONNX file is being written: the trial is out of flight and not yet in the study.
    monkeypatch.setattr(search.loop, "write_onnx", _ctrl_c_on_call(search.loop.write_onnx, 2))
    _, swept, _ = _run(tmp_path, shared, StandIn(shared[1]), trials=5, parallel=1, slots=1)
    running, _ = _left(swept.study)
    assert swept.summary.interrupted
    assert not running
    assert [t.number for t in finished(swept.study)] == [0, 1]  # the result being told when Ctrl-C came is kept


class AllAtOnce(InProcessExecutor):
    """Runs every queued trial in one wait(), as Ray hands back several results that finished together."""

    def wait(self, running, timeout):
        done = []
        while batch := super().wait(running, timeout):
            done += batch
        return done


class CtrlCOnFirstTold:
    """Listener: Ctrl-C while the first result is mirrored (as the MLflow mirror hears of it)."""

    def trial_told(self, loop, told) -> None:
        if not getattr(self, "sent", False):
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_while_one_result_is_mirrored_keeps_the_others_that_came_with_it(tmp_path, shared):  # noqa: F811
    # Two trials finish together; Ctrl-C comes while the listeners hear of the first. The second is told all the
    # same, not dropped to run again when the sweep resumes.
    ctx, onnx_bytes = shared
    search = {"sampler": "random", "trials": 4, "parallel": 2, "seed": 0}
    exp = load(small_experiment(tmp_path, name="together", task=TASK, space=WIDE, search=search))
    executor = AllAtOnce(exp.target.spec(), trial=StandIn(onnx_bytes), slots=2, timer=lambda m, s: _stats())
    swept = sweep(exp, executor, ctx, quiet=True, listeners=[CtrlCOnFirstTold()])
    running, queued = _left(swept.study)
    assert swept.summary.interrupted
    assert not running and not queued
    assert [t.number for t in finished(swept.study)] == [0, 1]
