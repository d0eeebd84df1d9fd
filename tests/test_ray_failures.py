"""A task Ray could not run becomes a failed trial that keeps its cause and the worker's traceback."""

from __future__ import annotations

import logging
import os

import pytest
import ray

from search.executor import RayExecutor, Running


@pytest.fixture(scope="module")
def local_ray():
    if not ray.is_initialized():
        ray.init(num_cpus=1, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
                 _node_ip_address="127.0.0.1")
    yield


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
