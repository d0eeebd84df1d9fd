"""A task Ray could not run becomes a failed trial that keeps its cause and the worker's traceback."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import ray

from search.executor import MACHINERY, RayExecutor, Running
from search.rungboard import start_board


@pytest.fixture(scope="module")
def local_ray():
    """The sweep's own local Ray, started while Ray's temp folder records another cluster (as `ray start` does):
    a local sweep must start its own Ray, never attach to whatever cluster ran on this machine before."""
    temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths have a length limit
    (temp / "ray").mkdir()
    (temp / "ray" / "ray_current_cluster").write_text("127.0.0.1:9")  # a cluster that is not there
    patch = pytest.MonkeyPatch()
    patch.setenv("RAY_TMPDIR", str(temp))
    patch.delenv("RAY_ADDRESS", raising=False)
    if ray.is_initialized():
        ray.shutdown()
    try:
        executor = RayExecutor(address=None)
        assert ray.get_runtime_context().gcs_address != "127.0.0.1:9"
        yield executor
    finally:
        ray.shutdown()
        patch.undo()
        shutil.rmtree(temp, ignore_errors=True)


def _result(executor, ref):
    ((item, result),) = executor.wait([Running(7, ref)], timeout=300)
    assert item.number == 7 and not result.ok
    return result


def test_a_task_error_keeps_its_cause_and_the_workers_traceback(local_ray):
    def _raises_in_the_worker() -> None:  # defined here so Ray ships it by value, as it does a trial's code
        raise RuntimeError("the teacher checkpoint vanished while the worker loaded it")

    result = _result(local_ray, ray.remote(max_retries=0)(_raises_in_the_worker).remote())
    assert result.error.startswith("RayTaskError")
    assert result.error.endswith("RuntimeError: the teacher checkpoint vanished while the worker loaded it")
    assert "_raises_in_the_worker" in result.traceback  # the frame that raised, from the worker


def test_a_dead_worker_keeps_rays_whole_report(local_ray):
    def _dies() -> None:
        os._exit(3)  # a crash no Python handler sees, like a segfault in a native library

    result = _result(local_ray, ray.remote(max_retries=0)(_dies).remote())
    assert result.error.split(":")[0] in {"WorkerCrashedError", "RayTaskError", "ActorDiedError"}
    assert len(result.traceback.splitlines()) > 1 and result.error.splitlines() == [result.error]
    assert result.info[MACHINERY] == "worker_died"  # the machinery's failure, run again by the driver


def test_a_plan_that_raises_is_the_plans_failure_not_the_machinerys(local_ray):
    def _raises() -> None:
        raise ValueError("this plan's model has no channels left")

    result = _result(local_ray, ray.remote(max_retries=0)(_raises).remote())
    assert MACHINERY not in result.info


def test_a_queued_trial_whose_wait_is_lost_with_the_rung_board_is_the_machinerys_failure(local_ray):
    def _hangs() -> None:
        time.sleep(3600)

    def _trial(waited: float) -> float:  # stands in for a queued trial: Ray starts it once its wait has returned
        return waited

    board = start_board(trial_slots=1)
    running = ray.remote(max_retries=0)(_hangs).remote()
    queued = ray.remote(max_retries=0)(_trial).remote(board.settled.remote([running]))
    ray.kill(board)  # the board's process dies while the queued trial waits behind the running one
    result = _result(local_ray, queued)
    assert result.info[MACHINERY] == "worker_died"  # run again by the driver, not the plan's failure
    ray.cancel(running, force=True)


def test_an_attempt_past_the_time_limit_is_stopped_and_counts_as_a_timeout(local_ray):
    def _hangs() -> None:
        time.sleep(3600)

    clock = [0.0]  # a fake clock at the timing seam: the limit passes when the test says so, not by waiting
    executor = RayExecutor(address=None, trial_timeout_s=60, clock=lambda: clock[0])
    item = Running(3, ray.remote(max_retries=0)(_hangs).remote(), clock[0])
    assert executor.wait([item], timeout=0.1) == []  # within its limit: still running
    clock[0] = 61.0
    ((done, result),) = executor.wait([item], timeout=0.1)
    assert done is item and result.info[MACHINERY] == "timeout"
    assert "search.trial_timeout_s = 60 s" in result.error
    with pytest.raises(ray.exceptions.RayError):  # the task itself was stopped, not left running
        ray.get(item.ref, timeout=120)
