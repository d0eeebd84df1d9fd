"""A task Ray could not run becomes a failed trial that keeps its cause and the worker's traceback."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import ray

from search.executor import RayExecutor, Running


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
        RayExecutor(address=None)
        assert ray.get_runtime_context().gcs_address != "127.0.0.1:9"
        yield
    finally:
        ray.shutdown()
        patch.undo()
        shutil.rmtree(temp, ignore_errors=True)


def _result(ref):
    (item, result), = RayExecutor.wait([Running(7, ref)], timeout=300)
    assert item.number == 7 and not result.ok
    return result


def test_a_task_error_keeps_its_cause_and_the_workers_traceback(local_ray):
    def _raises_in_the_worker() -> None:  # defined here so Ray ships it by value, as it does a trial's code
        raise RuntimeError("the teacher checkpoint vanished while the worker loaded it")

    result = _result(ray.remote(max_retries=0)(_raises_in_the_worker).remote())
    assert result.error.startswith("RayTaskError")
    assert result.error.endswith("RuntimeError: the teacher checkpoint vanished while the worker loaded it")
    assert "_raises_in_the_worker" in result.traceback  # the frame that raised, from the worker


def test_a_dead_worker_keeps_rays_whole_report(local_ray):
    def _dies() -> None:
        os._exit(3)  # a crash no Python handler sees, like a segfault in a native library

    result = _result(ray.remote(max_retries=0)(_dies).remote())
    assert result.error.split(":")[0] in {"WorkerCrashedError", "RayTaskError", "ActorDiedError"}
    assert len(result.traceback.splitlines()) > 1 and result.error.splitlines() == [result.error]
