"""Trials that train in rungs (cheap-then-full, the worker's half): a real small training on the digits task reports
its accuracy so far after each rung, goes on exactly as it would have when told to, and stops there when told not
to; in process and on a real local Ray."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import ray
from conftest import small_experiment

from evaluators.latency import LatencyStats
from evaluators.targets import TargetSpec
from search.config import Experiment, load
from search.dispatch import Report
from search.executor import RayExecutor
from search.gate import Bar, Candidate
from search.inprocess import InProcessExecutor
from search.rungboard import NewestBar, ask, start_board
from search.sweep import prepare
from search.trial import TrialContext, run_trial
from spaces.plan import CompressionPlan
from spaces.pruning_knobs import PruningChoice
from spaces.student_knobs import StudentChoice

ROOT = Path(__file__).resolve().parents[1]
TASK = {"name": "digits", "seed": 0, "teacher": {"epochs": 2}}
SPACE = {
    "students": {"teacher": True, "cnn": None},
    "pruning": {"ratio": [0.0], "recover_epochs": 0},
    "quantization": {"schemes": ["fp32"]},
}
# A small distilled student, three epochs: rungs after 1 and 2 fall inside its training.
STUDENT = CompressionPlan(student=StudentChoice("cnn", width=0.25, depth=1, epochs=3))
# The teacher itself pruned, recovering for 2 epochs: its only training is recovery.
PRUNED = CompressionPlan(student=StudentChoice(), pruning=PruningChoice(ratio=0.5, recover_epochs=2))


def _stats() -> LatencyStats:
    return LatencyStats(
        1.0, 1.0, 1.0, 1.0, 1.0, cv=0.0, ci_rel=0.0, throughput=1000.0, repeats=10, stable=True, retried=False
    )


def _time(model: bytes) -> tuple[LatencyStats, bool]:
    return _stats(), False


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Experiment, TrialContext]:
    """The digits task and its teacher (trained once for the file), with rungs after epochs 1 and 2."""
    exp = load(small_experiment(tmp_path_factory.mktemp("rungs"), name="rungs", task=TASK, space=SPACE))
    return exp, dataclasses.replace(prepare(exp), rungs=(1, 2))


@pytest.fixture
def ctx(prepared) -> TrialContext:
    return prepared[1]


class Answers:
    """A driver's side: hears every report, answers `go_on` (True unless the rung is in `stop_at`)."""

    def __init__(self, stop_at: tuple[int, ...] = ()) -> None:
        self.stop_at, self.heard = stop_at, []

    def __call__(self, rung: int, metrics: dict[str, float]) -> bool:
        self.heard.append((rung, dict(metrics)))
        return rung not in self.stop_at


@pytest.mark.fast
def test_reports_at_each_rung_and_trains_on_to_the_same_model_when_told_to(ctx):
    answers = Answers()
    reported = run_trial(0, STUDENT, ctx, _time, report=answers)
    plain = run_trial(0, STUDENT, dataclasses.replace(ctx, rungs=()), _time)
    assert reported.error is None and plain.error is None
    assert [rung for rung, _ in answers.heard] == [0, 1]
    assert [m["epochs"] for _, m in answers.heard] == [1.0, 2.0]
    assert all(m["epochs_planned"] == 3.0 for _, m in answers.heard)
    assert all(20.0 < m["accuracy"] <= 100.0 for _, m in answers.heard)  # ten classes: chance is 10%
    # The structure's figures, known before training, come with each report.
    assert all(m["latency_p50_ms"] == 1.0 and m["size_mb"] > 0 for _, m in answers.heard)
    # Reporting changed nothing: the same weights, hence the same deployed model and accuracy.
    assert reported.onnx == plain.onnx
    assert reported.metrics["accuracy"] == plain.metrics["accuracy"]
    assert (reported.info.epochs_used, reported.info.epochs_planned) == (3, 3) == (plain.info.epochs_used, 3)
    assert reported.info.stopped_at_rung is None


@pytest.mark.fast
def test_a_trial_told_to_stop_at_its_first_rung_ends_there_unexported(ctx):
    answers = Answers(stop_at=(0,))
    result = run_trial(0, STUDENT, ctx, _time, report=answers)
    assert result.error is None and result.onnx is None
    assert [rung for rung, _ in answers.heard] == [0]
    assert result.info.stopped_at_rung == 0
    assert (result.info.epochs_used, result.info.epochs_planned) == (1, 3)
    assert result.metrics["accuracy_so_far"] == answers.heard[0][1]["accuracy"]
    assert "accuracy" not in result.metrics and result.metrics["latency_p50_ms"] == 1.0
    assert result.metrics["params"] > 0 and "quantize" not in result.stages


@pytest.mark.fast
def test_a_pruned_plan_reports_during_its_recovery_training(ctx):
    answers = Answers()
    result = run_trial(1, PRUNED, ctx, _time, report=answers)
    assert result.error is None and result.onnx is not None
    # Rung 1 (2 epochs) is the plan's own end, not a rung: one report, after the first recovery epoch.
    assert [(rung, m["epochs"], m["epochs_planned"]) for rung, m in answers.heard] == [(0, 1.0, 2.0)]
    assert (result.info.epochs_used, result.info.epochs_planned) == (2, 2)


@pytest.mark.fast
def test_in_process_the_loops_verdict_reaches_the_trial_at_the_rung_it_reported(prepared):
    exp, ctx = prepared
    executor = InProcessExecutor(exp.target.spec(), timer=lambda m, s: _stats())
    heard = []

    def loop_side() -> None:  # what search/loop.py's _rungs does: decide every report it took
        for report in executor.reports():
            heard.append((report.number, report.rung))
            executor.decide(report.number, report.rung, report.rung == 0)

    executor.on_report = loop_side
    running = executor.submit(4, STUDENT, ctx)
    ((_, result),) = executor.wait([running], timeout=1.0)
    assert heard == [(4, 0), (4, 1)]
    assert result.info.stopped_at_rung == 1 and result.info.epochs_used == 2 and result.onnx is None


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray of the test's own (a short temp folder: Ray's socket paths have a length limit), shut down after."""
    temp = Path(tempfile.mkdtemp(prefix="rr", dir="/tmp"))
    patch = pytest.MonkeyPatch()
    patch.setenv("RAY_TMPDIR", str(temp))
    patch.delenv("RAY_ADDRESS", raising=False)
    if ray.is_initialized():
        ray.shutdown()
    try:
        yield RayExecutor(address=None)
    finally:
        ray.shutdown()
        patch.undo()
        shutil.rmtree(temp, ignore_errors=True)


def test_on_ray_a_trial_waits_at_its_rung_for_the_drivers_verdict_and_stops_there(prepared, local_ray):
    exp, ctx = prepared
    executor = local_ray
    executor.open_station(TargetSpec(kind="cpu", threads=1), reserve_cores=False)
    running = executor.submit(5, STUDENT, executor.put(ctx))
    heard: list[tuple[int, int]] = []
    finished: list = []
    deadline = time.monotonic() + 240
    while not finished and time.monotonic() < deadline:
        for report in executor.reports():  # what search/loop.py's _rungs does: decide every report it took
            heard.append((report.number, report.rung))
            assert report.metrics["epochs"] == 1.0 and 0.0 <= report.metrics["accuracy"] <= 100.0
            executor.decide(report.number, report.rung, False)
        finished = executor.wait([running], timeout=0.5)
    ((_, result),) = finished
    # The worker waited for the verdict: it reported its first rung only, and ended there.
    assert heard == [(5, 0)]
    assert result.error is None and result.onnx is None
    assert result.info.stopped_at_rung == 0 and result.info.epochs_used == 1
    assert "accuracy_so_far" in result.metrics


def test_the_board_answers_only_the_attempt_asked_and_lets_an_unanswered_trial_go_on(local_ray):
    board = start_board(trial_slots=1)
    first = board.post.remote("7:a", 7, Report(3, 0, {"accuracy": 50.0}), 60.0)
    taken: list = []
    while not taken:  # the post reaches the board
        taken = ray.get(board.take.remote())
    assert [(attempt, token, report.number, report.rung) for attempt, token, report in taken] == [("7:a", 7, 3, 0)]
    assert ray.get(board.take.remote()) == []  # handed over once
    board.decide.remote("7:a", 0, False)
    assert ray.get(first, timeout=60) is False
    # A later attempt of the same trial at the same rung reads no earlier answer: without its own, it goes on.
    assert ask(board, "7:b", 7, Report(3, 0, {"accuracy": 50.0}), wait_s=0.5) is True
    # So does a trial whose board is gone.
    ray.kill(board)
    assert ask(board, "7:c", 7, Report(3, 0, {"accuracy": 50.0}), wait_s=0.5) is True


def test_on_ray_a_trial_queued_behind_another_is_gated_by_the_bar_told_meanwhile_and_timed_from_its_start(
    prepared, local_ray
):
    exp, ctx = prepared
    clock = [0.0]  # the time limit's clock, moved by the test: no test waits for a limit to pass
    executor = RayExecutor(address=None, trial_timeout_s=1000.0, clock=lambda: clock[0])
    executor.open_station(TargetSpec(kind="cpu", threads=1), reserve_cores=False)
    data = executor.put(dataclasses.replace(ctx, rungs=()))  # no rung reports: nobody here answers them
    first = executor.submit(1, STUDENT, data)  # no bar: never gated, whenever the bar below reaches the board
    other = CompressionPlan(student=StudentChoice("cnn", width=0.5, depth=1, epochs=1))
    # Queued behind the first as the loop queues a plan, with the bar of its submit (empty), while a CPU is free.
    second = executor.submit(2, other, data, Bar(), behind=[first])
    second.queued = True
    clock[0] = 1500.0  # past the limit counted from its submit, but it has not started: it is not stopped
    assert executor.wait([second], timeout=0.1) == []
    result = ray.get(first.ref, timeout=600)  # the first's own limit is not this test's
    assert result.error is None and result.onnx is not None
    # What the driver posts once it has told the first result (the second may already wait for it at its compare):
    # a model faster and smaller than any structure.
    executor.post_bar(Bar((Candidate(1, 99.0, 0.0, 0.0),), 98.0), told=[1])
    executor.started(second)  # the slot is free: its limit counts from 1500 s
    clock[0] = 2000.0
    done: list = []
    while not done:
        done = executor.wait([second], timeout=5.0)
    ((_, gated),) = done
    assert gated.error is None, gated.error  # not timed out: 500 s since it started
    assert gated.info.skipped_training and gated.info.dominated_by == 1  # the bar posted after its submit stopped it
    assert "distill" not in gated.stages
    # It started after the first ended, though a CPU was free and the first waited at the station on its way.
    assert gated.info.clock["worker_began"] >= result.info.clock["worker_ended"]


def test_a_queued_worker_reads_the_bar_told_after_the_trial_it_waited_behind_or_its_own(local_ray):
    board = start_board(trial_slots=1)
    own, newer = Bar(), Bar((Candidate(4, 97.0, 0.1, 0.1),), 96.0)
    assert NewestBar(board, -1, own, [])() is own  # nothing posted yet
    waiting = NewestBar(board, 2, own, [7])
    waiting.ask()  # sent while the structure is timed: it waits at the board for trial 7's result to be told
    ray.get(board.post_bar.remote(3, newer, [7]))
    assert waiting() == newer
    assert NewestBar(board, 3, own, [7])() is own  # the one it was submitted with is as new
    ray.get(board.post_bar.remote(1, own, [8]))  # an older bar arriving late changes nothing
    assert NewestBar(board, 2, own, [7])() == newer
    # Behind a trial never told (the driver busy or gone): the newest bar once the wait is over.
    assert ray.get(board.newest_bar.remote(2, [9], 0.2)) == newer
    ray.kill(board)
    assert NewestBar(board, 2, own, [7])() is own


def test_the_board_starts_without_torch():
    """The board's actor imports only its module: a sweep starts one per run, and torch would add seconds to each."""
    code = "import sys, search.rungboard; print(sorted({'torch', 'onnxruntime', 'mlflow'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
