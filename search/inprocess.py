"""The in-process executor: trials run one after another in the driver's own process, models are timed there by the
target's real timing (evaluators/latency.py through evaluators/targets.py); no Ray. For tests of the driver's rules
and for benchmarks' replays; a user's sweep runs on RayExecutor."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import asdict, fields
from typing import Any

from evaluators.compare import CompareSettings, Comparison, compare
from evaluators.graph_key import graph_key
from evaluators.latency import LatencyStats, TimingSettings
from evaluators.targets import TargetSpec, make_target
from search.dispatch import MACHINERY, Report, Running
from search.gate import Bar
from search.trial import ReportRung, TimeModel, TrialContext, TrialResult, run_trial

# A trial as the in-process executor runs it: run_trial's arguments and a `report` for its rungs.
TrialFn = Callable[[int, Any, TrialContext, TimeModel, Bar | None, ReportRung], TrialResult]


def real_trial(
    number: int, plan: Any, ctx: TrialContext, time_model: TimeModel, bar: Bar | None, report: ReportRung
) -> TrialResult:
    """search.trial.run_trial, the trial a worker runs, reporting its rungs to the loop."""
    return run_trial(number, plan, ctx, time_model, bar, report)


class InProcessExecutor:
    """Runs each submitted trial when the loop waits for results, one at a time, in this process."""

    def __init__(
        self,
        spec: TargetSpec,
        *,
        trial: TrialFn = real_trial,
        slots: int = 1,
        timer: Callable[[bytes, TimingSettings], LatencyStats] | None = None,
    ) -> None:
        self.spec, self.trial, self.slots = spec, trial, slots
        self.target = make_target(spec)
        # A measurement of one model; tests may pass a fixed one (the driver's rules do not depend on a speed).
        self.timer = timer or self.target.measure
        self.where: tuple[str, list[int]] = ("in-process", [])
        self.cache: dict[str, LatencyStats] = {}
        self.new: list[str] = []
        self.hits = self.misses = 0
        self._queue: list[tuple[Running, Any, Any, Bar | None]] = []
        self._bar: Bar | None = None  # the newest gate bar, submitted or posted: a trial is gated by it when it runs
        self._reports: list[Report] = []
        # Reports of the running trial awaiting the loop's verdict, by (number, rung): None until decide() answers.
        self._pending: dict[tuple[int, int], bool | None] = {}
        self._ids = itertools.count()
        self.submitted: list[int] = []  # every trial number submitted, in order (tests read it)
        # Trials here run inside wait(): the loop answers a rung report at once through this (search/loop.py sets
        # it to its rung step), so its decide() reaches the trial at the rung it reported.
        self.on_report: Callable[[], None] | None = None

    def warm(self, workers: int) -> None:
        """Nothing to start: trials run in this process."""

    def warmed(self, timeout_s: float = 0.0) -> None:
        """Nothing to wait for."""

    @staticmethod
    def put(obj: Any) -> Any:
        """The object itself: trials share this process's memory."""
        return obj

    def submit(
        self, number: int, plan: Any, context_ref: Any, bar: Bar | None = None, behind: list[Running] | None = None
    ) -> Running:
        """Queue one trial; it runs when the loop next waits (after those submitted before it: `behind` holds)."""
        item = Running(number, next(self._ids), time.monotonic())
        self.post_bar(bar)
        self._queue.append((item, plan, context_ref, bar))
        self.submitted.append(number)
        return item

    def wait(self, running: list[Running], timeout: float) -> list[tuple[Running, TrialResult]]:
        """Run the oldest queued trial of `running` to its end (an exception it raises, Ctrl-C included, reaches
        the loop as a worker's would not: that is how tests stop a sweep mid-trial)."""
        wanted = {r.ref for r in running}
        for i, (item, plan, ctx, bar) in enumerate(self._queue):
            if item.ref in wanted:
                del self._queue[i]
                newest = self._bar if bar is not None else None  # as a queued trial on Ray reads the board's
                return [(item, self._run(item.number, plan, ctx, newest))]
        return []

    @staticmethod
    def started(running: Running) -> None:
        """A queued trial's turn: trials here run one at a time inside wait() and have no time limit."""
        running.queued = False

    def post_bar(self, bar: Bar | None, told: list[int] | None = None) -> None:
        """The newest gate bar, which the next trial to run is gated by (trials here run after the tells)."""
        if bar is not None:
            self._bar = bar

    def _run(self, number: int, plan: Any, ctx: TrialContext, bar: Bar | None) -> TrialResult:
        def time_model(model: bytes) -> tuple[LatencyStats, bool]:
            return self.time_model(model, ctx.timing)

        def report(rung: int, metrics: dict[str, float]) -> bool:
            self._pending[(number, rung)] = None
            self._reports.append(Report(number, rung, dict(metrics)))
            if self.on_report is not None:
                self.on_report()
            return self._pending.pop((number, rung)) is not False  # no verdict: it goes on, as on Ray

        began = time.time()
        try:
            result = self.trial(number, plan, ctx, time_model, bar, report)
        finally:
            self._pending.clear()  # nothing is left for a later attempt of the same number to read
        result.info.setdefault("clock", {}).update(worker_began=began, worker_ended=time.time())
        return result

    def reports(self) -> list[Report]:
        """Rung reports since the last call."""
        out, self._reports = self._reports, []
        return out

    def decide(self, number: int, rung: int, go_on: bool) -> None:
        """Answer the trial's report at `rung`: False ends it there; a report no longer awaited is ignored."""
        if (number, rung) in self._pending:
            self._pending[(number, rung)] = go_on

    def cancel(self, running: list[Running]) -> None:
        """Drop queued trials (the one running, if any, has already raised)."""
        refs = {r.ref for r in running}
        self._queue = [q for q in self._queue if q[0].ref not in refs]

    def trial_slots(self) -> int:
        """As many as the executor was made with: in-flight trials wait their turn in this process."""
        return self.slots

    def time_model(
        self, model: bytes, settings: TimingSettings, *, use_cache: bool = True
    ) -> tuple[LatencyStats, bool]:
        """Time one model here, cached by graph structure like the bench station."""
        key = graph_key(model, self.target.describe(), asdict(settings))
        if use_cache and key in self.cache:
            self.hits += 1
            return self.cache[key], True
        stats = self.timer(model, settings)
        self.cache[key] = stats
        self.new.append(key)
        self.misses += 1
        return stats, False

    def compare(self, models: list[bytes], names: list[str], settings: CompareSettings) -> Comparison:
        """Time models side by side here, interleaved (the pick's verification)."""
        target = self.target
        return compare(models, settings, names=names, providers=target.providers(), require_provider=target.provider)

    def new_latencies(self) -> dict[str, dict]:
        out = {key: asdict(self.cache[key]) for key in self.new}
        self.new = []
        return out

    def seed_latencies(self, entries: dict[str, dict]) -> None:
        names = {f.name for f in fields(LatencyStats)}
        for key, stats in entries.items():
            if set(stats) == names:
                self.cache.setdefault(key, LatencyStats(**stats))

    def station_counts(self) -> dict[str, int]:
        return {"latency_cache_hits": self.hits, "latency_cache_misses": self.misses}

    def describe_target(self) -> dict:
        return self.target.describe()


def machinery_failure(number: int, kind: str = "worker_died", error: str = "the worker died") -> TrialResult:
    """A failed result as RayExecutor makes one when the machinery, not the plan, failed (for trial functions that
    stand in for a lost worker)."""
    return TrialResult(number=number, error=error, info={MACHINERY: kind})
