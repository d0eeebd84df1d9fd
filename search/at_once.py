"""Why a sweep ran fewer trials at once than `search.parallel` asks (the bench station's reserved cores, each trial's
resources, the machine's size), so a user never meets an unexplained "1 at a time"."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from search.config import Experiment


def fewer_at_once(exp: Experiment, running: int, *, cluster: bool, cpus: int | None = None) -> str | None:
    """The reason `running` is below search.parallel, as one line; None when it is not (`cpus`: this machine's)."""
    from evaluators.targets import make_target

    asked = exp.search.parallel
    if running >= asked:
        return None
    per = exp.search.resources
    trial = f"{per.num_cpus} CPU" + (f" and {per.num_gpus:g} GPU" if per.num_gpus else "")
    where = "the Ray cluster's live nodes hold" if cluster else f"this machine's {cpus or os.cpu_count()} CPUs hold"
    why = f"{running} at a time, not search.parallel's {asked}: {where} {running} of {trial} each (search.resources)"
    target = make_target(exp.target.spec())
    if exp.target.reserve_cores and target.local_cpu():
        cores = exp.target.threads
        why += (
            f" beside the bench station's {cores} reserved core{'s' if cores > 1 else ''} (target.threads), which no "
            "trial trains on so that timings stay quiet; target.reserve_cores: false shares them: more trials at "
            "once, noisier timings"
        )
    elif target.uses_gpu and per.num_gpus:
        why += ", beside the GPU the bench station holds for timing"
    return why
