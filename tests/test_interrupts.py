"""Ctrl-C in the middle of the driver's bookkeeping: a trial just asked, or just back and not yet told, is never left
RUNNING with no driver to queue it again (a clean-clone run of the Ctrl-C resume test once found one)."""

from __future__ import annotations

import os
import signal

import pytest
from optuna.trial import TrialState
from test_driver_rules import StandIn, _run, shared  # noqa: F401 - shared: the fixture the rules' sweeps use
from test_loop_overhead import AskAhead

import search.loop
from search.study import finished, interrupted

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
