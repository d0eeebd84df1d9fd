"""Ray dispatch: trials run as Ray tasks on a local Ray or a cluster; the driver keeps all state."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import ray

from evaluators.errors import ConfigError
from search.trial import TrialResult, run_trial


def _run_on_node(number: int, plan: Any, ctx: Any) -> TrialResult:
    """run_trial, noting which Ray node ran it."""
    result = run_trial(number, plan, ctx)
    result.info["ray_node"] = ray.get_runtime_context().get_node_id()
    return result


@dataclass
class Running:
    """A trial in flight."""

    number: int
    ref: Any  # ray.ObjectRef


class RayExecutor:
    """Submits trials as Ray tasks, one CPU each, and hands back results as they finish."""

    def __init__(self, *, address: str | None, cpus_per_trial: int = 1) -> None:
        if not ray.is_initialized():
            try:
                if address:
                    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
                else:
                    # A local Ray needs no network interface: keep it on loopback.
                    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING,
                             log_to_driver=False, _node_ip_address="127.0.0.1")
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ConfigError(f"--ray-address {address!r}: cannot connect to a Ray cluster there: {exc}") from None
        # A node that dies takes its tasks with it; Ray runs them again elsewhere (max_retries), which is safe
        # because a trial holds no state outside its result.
        self._task = ray.remote(num_cpus=cpus_per_trial, max_retries=2, retry_exceptions=False)(_run_on_node)

    @staticmethod
    def cluster_cpus() -> int:
        """CPUs the cluster offers (all nodes)."""
        return int(ray.cluster_resources().get("CPU", 1))

    @staticmethod
    def put(obj: Any) -> Any:
        """Place a shared object (the task data and teacher) in the object store once."""
        return ray.put(obj)

    def submit(self, number: int, plan: Any, context_ref: Any) -> Running:
        """Start one trial."""
        return Running(number, self._task.remote(number, plan, context_ref))

    @staticmethod
    def wait(running: list[Running], timeout: float) -> list[tuple[Running, TrialResult]]:
        """Results of the trials that finished within `timeout`; a task Ray could not run becomes a failed result."""
        if not running:
            return []
        done, _ = ray.wait([r.ref for r in running], num_returns=1, timeout=timeout)
        finished = []
        for r in running:
            if r.ref in done:
                try:
                    result = ray.get(r.ref)
                except ray.exceptions.RayError as exc:  # worker died, out of memory, node lost
                    result = TrialResult(number=r.number, error=f"{type(exc).__name__}: {exc}".splitlines()[0])
                finished.append((r, result))
        return finished

    @staticmethod
    def cancel(running: list[Running]) -> None:
        """Stop trials in flight (Ctrl-C)."""
        for r in running:
            ray.cancel(r.ref, force=True)
