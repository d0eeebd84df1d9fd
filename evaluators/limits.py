"""Limits on one model's run outside the device agent: the bench station's timing and the accuracy pass run in a
long-lived worker process (the agent's, evaluators/agent_worker.py) with a memory cap and a deadline, so a model whose
output is 32 GiB or whose Loop never ends fails with its reason instead of taking the driver, trial or station down."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any, Callable

from evaluators.agent_worker import LimitExceeded, Worker
from evaluators.errors import ConfigError

__all__ = ["LimitExceeded", "Limits", "default_memory_mb", "run_limited"]

# Floors and ceilings a Limits may take: below the floor a normal model cannot even load (the worker's own
# interpreter and ONNX Runtime reserve about 1 GB of address space); a deadline over a day is no deadline.
_MIN_MEMORY_MB, _MAX_SECONDS = 1024, 86_400.0


def default_memory_mb() -> int:
    """Half of this machine's memory, at least 4 GiB: far above what a compressed classifier needs."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    except (ValueError, OSError, AttributeError):
        total = 0
    return max(4096, total // 2)


@dataclass(frozen=True)
class Limits:
    """A memory cap (MB of address space; None: none, as on a GPU runtime) and a deadline (seconds) per model."""

    memory_mb: int | None = None  # None here means default_memory_mb(); see cap()
    seconds: float = 600.0
    capped: bool = True  # False: no memory cap at all (CUDA and TensorRT reserve address space beyond any cap)

    def __post_init__(self) -> None:
        if self.memory_mb is not None and self.memory_mb < _MIN_MEMORY_MB:
            raise ConfigError(f"Limits.memory_mb = {self.memory_mb!r}; it must be >= {_MIN_MEMORY_MB} (MB)")
        if not 0 < self.seconds <= _MAX_SECONDS:
            raise ConfigError(f"Limits.seconds = {self.seconds!r}; it must be > 0 and <= {_MAX_SECONDS:g}")

    def cap(self) -> int | None:
        """The memory cap in MB the worker runs under, or None for none."""
        if not self.capped:
            return None
        return self.memory_mb if self.memory_mb is not None else default_memory_mb()


_workers: dict[int | None, Worker] = {}  # one long-lived worker per cap in this process
_guard = threading.Lock()


def run_limited(fn: Callable[..., Any], *args: Any, limits: Limits, what: str, **kwargs: Any) -> Any:
    """fn(*args, **kwargs) in this process's worker under limits (fn a module-level function); LimitExceeded, naming
    the cap or the deadline, when the model goes beyond them."""
    cap = limits.cap()
    with _guard:
        worker = _workers.setdefault(cap, Worker(cap))
    return worker.call(fn, *args, seconds=limits.seconds, what=what, **kwargs)
