"""The one timing method of slimsweep: warm-up, repeats until the median is known well enough, percentiles, noise check.

The same `measure` times a model for a trial, for `slimsweep bench` and on the device agent, so every latency
in a sweep was taken the same way and ratios between them mean something.
"""

from __future__ import annotations

import gc
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import numpy as np
import onnxruntime as ort

from evaluators.errors import ConfigError, SlimsweepError
from evaluators.runtime import Provider, input_dtype, input_shape, make_session

# Runs between two checks of the stopping rule: sorting the sample after every run would cost more than a tiny model.
_CHUNK = 25
_Z95 = 1.959964
# The clock every timed run reads; one seam, so a test can put a fake clock here.
_clock = time.perf_counter_ns


# A trial's timing: enough repeats for a stable median of a sub-millisecond model without dominating a trial
# (`slimsweep bench` uses the same, so its figures read like a sweep's).
TRIAL_TIMING = {"warmup": 20, "min_repeats": 50, "max_seconds": 1.0}


def check_settings(settings: object, minimums: dict[str, float], ordered: tuple[str, str]) -> None:
    """Refuse a setting below its minimum, or the first of `ordered` above the second (ConfigError naming it)."""
    name = type(settings).__name__
    for field in fields(settings):
        value = getattr(settings, field.name)
        if value < minimums[field.name]:
            raise ConfigError(f"{name}.{field.name} = {value!r}; it must be >= {minimums[field.name]}")
    low, high = ordered
    if getattr(settings, low) > getattr(settings, high):
        raise ConfigError(
            f"{name}.{low} = {getattr(settings, low)} is above {high} = {getattr(settings, high)}; "
            f"{low} must be <= {high}"
        )


@dataclass(frozen=True)
class TimingSettings:
    """How a model is timed: threads, batch, warm-up, and when the repeat loop stops."""

    threads: int = 1
    batch_size: int = 1
    warmup: int = 20  # runs discarded
    min_repeats: int = 50
    max_repeats: int = 5000
    max_seconds: float = 2.0  # time cap for the repeat loop
    target_rel_ci: float = 0.02  # stop once the 95% CI of the median is within ±2% of the median
    max_cv: float = 0.35  # a measurement above this CV is retried once, and flagged unstable if still above

    def __post_init__(self) -> None:
        minimums = {
            "threads": 1,
            "batch_size": 1,
            "warmup": 0,
            "min_repeats": 1,
            "max_repeats": 1,
            "max_seconds": 0,
            "target_rel_ci": 0,
            "max_cv": 0,
        }
        check_settings(self, minimums, ("min_repeats", "max_repeats"))


@dataclass(frozen=True)
class LatencyStats:
    """What one measurement found: per-run latency percentiles in milliseconds, spread, and how trustworthy it is."""

    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    cv: float  # std/mean of the per-run times
    # Half-width of the 95% CI of the median divided by the median: run to run within this one measurement only;
    # another process lands further off (up to ±12.8% in benchmarks/honesty.py; compare.APART_DRIFT).
    ci_rel: float
    throughput: float  # samples per second = batch_size / mean seconds
    repeats: int
    stable: bool  # ci_rel <= target, cv <= max_cv, and the time cap did not cut the loop below min_repeats
    retried: bool
    batch_size: int = 1  # items per run; a figure from an agent of an earlier release lacks it (then 1)

    @property
    def throughput_per_s(self) -> float:
        """Items per second at the target's batch, from the median run: batch_size / p50 seconds."""
        return self.batch_size * 1000.0 / self.p50_ms

    def metrics(self) -> dict[str, float]:
        """The figures as metric names, for Optuna objectives and MLflow."""
        return {
            "latency_p50_ms": self.p50_ms,
            "latency_p90_ms": self.p90_ms,
            "latency_p95_ms": self.p95_ms,
            "latency_p99_ms": self.p99_ms,
            "latency_mean_ms": self.mean_ms,
            "latency_cv": self.cv,
            "latency_ci_rel": self.ci_rel,
            "throughput_per_s": self.throughput_per_s,
        }


def median_ci(sample: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """The 95% confidence interval of the sample's median, from order statistics."""
    ordered = np.sort(np.asarray(sample, dtype=np.float64))
    n = len(ordered)
    half = _Z95 * math.sqrt(n) / 2
    # 1-based ranks: the number of runs below the true median is Binomial(n, 1/2), which needs no assumption
    # about the shape of the timing distribution (latencies are skewed, with a long tail).
    lower = max(math.floor(n / 2 - half), 1)
    upper = min(math.ceil(1 + n / 2 + half), n)
    return float(ordered[lower - 1]), float(ordered[upper - 1])


def measure(
    model: bytes | str | os.PathLike,
    settings: TimingSettings = TimingSettings(),
    *,
    providers: Sequence[Provider] = ("CPUExecutionProvider",),
    require_provider: str | None = None,
) -> LatencyStats:
    """Time one model on ONNX Runtime with the project's timing method."""
    prepared = prepare(
        model,
        threads=settings.threads,
        batch_size=settings.batch_size,
        providers=providers,
        require_provider=require_provider,
    )
    prepared.warm_up(settings.warmup)
    stats = _summarize(_time_runs(prepared, settings), settings, retried=False)
    if stats.cv > settings.max_cv:
        # A noisy spell (another process, a frequency change) often passes; retry once, then let the flag say it.
        stats = _summarize(_time_runs(prepared, settings), settings, retried=True)
    return stats


@dataclass(frozen=True)
class Prepared:
    """An open session and the fixed input it is timed on."""

    session: ort.InferenceSession
    feed: dict[str, np.ndarray]

    def run(self) -> None:
        """One inference."""
        self.session.run(None, self.feed)

    def warm_up(self, runs: int) -> None:
        """Runs whose times are discarded (allocations, caches, lazy kernel choices)."""
        for _ in range(runs):
            self.run()


def prepare(
    model: bytes | str | os.PathLike,
    *,
    threads: int,
    batch_size: int,
    providers: Sequence[Provider] = ("CPUExecutionProvider",),
    require_provider: str | None = None,
) -> Prepared:
    """Open the model's session as every timing does, and its input at the batch size (or the model's fixed one)."""
    session = make_session(model, threads=threads, providers=providers)
    got = session.get_providers()
    if require_provider is not None and (not got or got[0] != require_provider):
        # ONNX Runtime falls back to the CPU with only a log line; CPU timings must never pass for the device's.
        raise SlimsweepError(
            f"ONNX Runtime fell back to {got[0] if got else 'no provider'} for this model instead of "
            f"{require_provider} (the device or its libraries did not start), so it was not timed"
        )
    shape = input_shape(session, batch_size)
    if shape[0] != batch_size:
        raise SlimsweepError(
            f"the model's input {session.get_inputs()[0].name!r} has a fixed batch of {shape[0]}, "
            f"but TimingSettings.batch_size = {batch_size}; time it with batch_size={shape[0]} "
            "or export it with a symbolic batch dimension"
        )
    # Latency does not depend on the values, so a fixed random input keeps measurements repeatable.
    x = np.random.default_rng(0).standard_normal(shape).astype(input_dtype(session))
    return Prepared(session, {session.get_inputs()[0].name: x})


def timed_runs(
    prepared: Prepared,
    *,
    max_runs: int,
    seconds: float,
    at_least: int = 1,
    enough: Callable[[list[int]], bool] | None = None,
) -> np.ndarray:
    """Per-run times (ms) of back-to-back runs, until max_runs, `seconds` (once `at_least` ran), or `enough`."""
    times_ns: list[int] = []
    deadline = _clock() + int(seconds * 1e9)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a garbage collection inside a timed run would be charged to the model
    try:
        while len(times_ns) < max_runs:
            start = _clock()
            prepared.run()
            end = _clock()
            times_ns.append(end - start)
            if end >= deadline and len(times_ns) >= at_least:
                break
            if enough is not None and enough(times_ns):
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return np.asarray(times_ns, dtype=np.float64) / 1e6


def _time_runs(prepared: Prepared, settings: TimingSettings) -> np.ndarray:
    """Per-run times in milliseconds, repeated until the median is tight, max_repeats, or the time cap."""

    def tight(times_ns: list[int]) -> bool:
        done = len(times_ns) - settings.min_repeats
        return done >= 0 and done % _CHUNK == 0 and _ci_rel(times_ns) <= settings.target_rel_ci

    return timed_runs(prepared, max_runs=settings.max_repeats, seconds=settings.max_seconds, enough=tight)


def _ci_rel(sample: Sequence[float] | np.ndarray) -> float:
    lower, upper = median_ci(sample)
    return (upper - lower) / 2 / float(np.median(sample))


def _summarize(times_ms: np.ndarray, settings: TimingSettings, *, retried: bool) -> LatencyStats:
    p50, p90, p95, p99 = np.percentile(times_ms, [50, 90, 95, 99])
    mean = float(times_ms.mean())
    cv = float(times_ms.std() / mean)
    ci_rel = _ci_rel(times_ms)
    repeats = len(times_ms)
    return LatencyStats(
        p50_ms=float(p50),
        p90_ms=float(p90),
        p95_ms=float(p95),
        p99_ms=float(p99),
        mean_ms=mean,
        cv=cv,
        ci_rel=ci_rel,
        throughput=settings.batch_size / (mean / 1e3),
        repeats=repeats,
        stable=ci_rel <= settings.target_rel_ci and cv <= settings.max_cv and repeats >= settings.min_repeats,
        retried=retried,
        batch_size=settings.batch_size,
    )
