"""What the driver's loop asks of whatever runs its trials: the `Executor` protocol, and the events it hands back.

Two implementations: `search.executor.RayExecutor` (Ray tasks on a local Ray or a cluster, a bench station actor)
and `search.inprocess.InProcessExecutor` (the driver's own process; tests and benchmarks' replays). This module
imports neither Ray nor torch.

Rungs (cheap-then-full, search/rungs.py): a trial reports after each of its training rungs (search.trial's
`ReportRung`: `report(rung, metrics) -> bool`, False: stop now) and waits for the driver's verdict. The executor
hands such reports back from `reports()`, beside final results from `wait()`; the loop passes each to its listeners
and answers EVERY report it took with `decide(number, rung, go_on)`. A trial told to stop ends at that rung with
its accuracy so far (search/trial.py). The in-process executor runs a trial inside `wait()`, so it asks the loop
between rungs (its `on_report`, which the loop sets) and the verdict reaches the trial at once. On Ray, a trial's
report waits at a board actor (search/rungboard.py) until the driver decides or a timeout passes; without a
verdict it goes on training, so a trial is never stopped by a driver that did not answer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # annotations only: the rung board's actor imports this module, and search.trial imports torch
    from evaluators.compare import CompareSettings, Comparison
    from evaluators.latency import LatencyStats, TimingSettings
    from search.gate import Bar
    from search.trial import TrialResult

MACHINERY = "machinery_failure"  # key in a failed result's info: the kind of machinery failure, if it was one


@dataclass
class Running:
    """A trial in flight."""

    number: int
    ref: Any  # ray.ObjectRef, or the in-process executor's own handle
    started: float = field(default=0.0)  # on the executor's clock, for the time limit
    submitted: float = field(default_factory=time.time)  # wall clock, for where a trial's time goes
    # Submitted while every slot was busy, to start the moment one frees (search/loop.py): its time limit counts
    # from when the loop saw a slot free (`Executor.started`), not from its submit.
    queued: bool = False


@dataclass(frozen=True)
class Report:
    """A running trial's figures at the end of one training rung (say, after its first epochs)."""

    number: int
    rung: int
    metrics: dict[str, float]


class Executor(Protocol):
    """Runs trials and times models at the target's station; the driver keeps all state."""

    where: tuple[str, list[int]]  # the station's node and the cores it keeps (("", []) when it keeps none)

    def warm(self, workers: int) -> None:
        """Start trial workers early so their imports overlap the driver's setup."""

    def warmed(self, timeout_s: float = ...) -> None:
        """Wait for the warm-up workers, so they do not share the station's cores while it times the teacher."""

    def put(self, obj: Any) -> Any:
        """Hand over what every trial shares once; returns the handle `submit` takes."""

    def submit(
        self, number: int, plan: Any, context_ref: Any, bar: Bar | None = None, behind: list[Running] | None = None
    ) -> Running:
        """Start one trial; `behind`: trials in flight it waits for, starting once one of them has ended."""

    def started(self, running: Running) -> None:
        """A queued trial's slot is free: it runs now, and its time limit counts from now."""

    def post_bar(self, bar: Bar | None, told: list[int] | None = None) -> None:
        """The newest gate bar, with the trials `told` since the last: a trial queued behind one of them is gated by
        it."""

    def wait(self, running: list[Running], timeout: float) -> list[tuple[Running, TrialResult]]:
        """Results of trials that finished within `timeout` (a machinery failure is a failed result)."""

    def reports(self) -> list[Report]:
        """Rung reports of trials in flight since the last call."""

    def decide(self, number: int, rung: int, go_on: bool) -> None:
        """Answer a trial's report at `rung` (one `reports()` handed back): go on training, or end there."""

    def cancel(self, running: list[Running]) -> None:
        """Stop trials in flight at once (Ctrl-C, or the driver failing)."""

    def trial_slots(self) -> int:
        """How many trials can run at once now."""

    def time_model(
        self, model: bytes, settings: TimingSettings, *, use_cache: bool = True
    ) -> tuple[LatencyStats, bool]:
        """Time one model at the station: its statistics and whether they came from the latency cache."""

    def compare(self, models: list[bytes], names: list[str], settings: CompareSettings) -> Comparison:
        """Time models side by side at the station (models[0] the baseline): the pick's verification."""

    def new_latencies(self) -> dict[str, dict]:
        """Measurements the station took since the last call (kept with the study)."""

    def seed_latencies(self, entries: dict[str, dict]) -> None:
        """Measurements kept from an earlier run: not timed again."""

    def station_counts(self) -> dict[str, int]:
        """Latency-cache hits and misses."""

    def describe_target(self) -> dict:
        """The target as the station reports it."""
