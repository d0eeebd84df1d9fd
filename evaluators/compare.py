"""Side-by-side timing: models timed interleaved, round after round, in one process, and each one's speed-up over
the baseline (the first model) as the median of per-round ratios with a 95% confidence interval.

A shared machine drifts by tens of percent within minutes, so two medians taken apart can even swap two models'
order. Within one round every model sees the same machine, so the per-round ratio cancels the drift; its median and
order-statistics interval (latency.median_ci) say how sure the speed-up is within this one process. The next
process lands elsewhere (the machine, the memory layout and the CPU's clocks differ), so the interval slimsweep
reports and decides by is that round-to-round interval widened by the drift between processes (SIDE_BY_SIDE_DRIFT).
Each burst is timed by latency.py's own session set-up, warm-up and per-run timing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evaluators.errors import ConfigError
from evaluators.latency import LatencyStats, Prepared, TimingSettings, check_settings, median_ci, prepare, timed_runs
from evaluators.runtime import Provider

# Drift between processes, as benchmarks/honesty.py measures it (docs/BENCHMARKS.md, "How honest is the latency?"):
# a side-by-side speed-up moved at most ±4.0% from one process to the next (median ±1.8%), and one model's median
# timed alone up to ±12.8% (median ±4.1%). A round-to-round interval within one process covers neither, so every
# interval slimsweep stores, prints or decides by is widened by these margins (the honesty benchmark's ±5% goal
# for a ratio; the worst single-median spread it measured, rounded up, for medians taken apart).
SIDE_BY_SIDE_DRIFT = 0.05
APART_DRIFT = 0.13


def covers(drift: float) -> str:
    """What a side-by-side speed-up interval widened by `drift` covers, in words."""
    return (
        f"95% interval of the median of per-round ratios, widened by ±{drift:.0%} for the drift between processes "
        "that benchmarks/honesty.py measures"
    )


INTERVAL_COVERS = covers(SIDE_BY_SIDE_DRIFT)
APART_COVERS = (
    f"medians timed apart during the sweep: one is faster only when more than {APART_DRIFT:.0%} below the other (the "
    "most a median moved between processes in benchmarks/honesty.py)"
)


def widen(low: float, high: float, drift: float) -> tuple[float, float]:
    """An interval widened by a relative drift on each side."""
    return low * (1.0 - drift), high * (1.0 + drift)


def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two intervals share a point: neither figure is measurably above the other."""
    return a[0] <= b[1] and b[0] <= a[1]


def clearly_below(a_ms: float, b_ms: float, drift: float = APART_DRIFT) -> bool:
    """Whether a median timed apart is below another by more than the drift between processes."""
    return a_ms < b_ms * (1.0 - drift)


# One model's turn in a round: returns the burst's p50 in ms and how many runs it timed.
Burst = Callable[[], tuple[float, int]]


@dataclass(frozen=True)
class CompareSettings:
    """How models are timed side by side: threads, batch, warm-up, the burst each gets per round, and when to stop."""

    threads: int = 1
    batch_size: int = 1
    warmup: int = 20  # runs discarded per model before the first round
    burst_seconds: float = 0.02  # each model's turn in a round
    burst_min_runs: int = 5  # timed runs per turn at least, however slow the model
    burst_warmup: int = 1  # runs discarded at the start of each turn: the previous model evicted this one's caches
    min_rounds: int = 20
    max_rounds: int = 1000
    max_seconds: float = 30.0  # time cap for all rounds together
    target_rel_ci: float = 0.03  # stop once every speed-up's 95% CI is within ±3% of it
    seed: int = 0  # the order of the models within each round is shuffled by this seed

    def __post_init__(self) -> None:
        minimums = {
            "threads": 1,
            "batch_size": 1,
            "warmup": 0,
            "burst_seconds": 0,
            "burst_min_runs": 1,
            "burst_warmup": 0,
            "min_rounds": 1,
            "max_rounds": 1,
            "max_seconds": 0,
            "target_rel_ci": 0,
            "seed": 0,
        }
        check_settings(self, minimums, ("min_rounds", "max_rounds"))


@dataclass(frozen=True)
class ModelTiming:
    """One model's side-by-side figures: its typical p50 and its speed-up over the baseline, with their spread."""

    name: str
    p50_ms: float  # median over rounds of the model's per-round p50
    p50_ci_low_ms: float  # 95% CI of that median, widened by APART_DRIFT (a median alone drifts between processes)
    p50_ci_high_ms: float
    round_cv: float  # std/mean of the per-round p50s: how much the machine moved during the comparison
    runs: int  # timed runs over all rounds
    speedup: float  # median over rounds of baseline p50 / this model's p50 (> 1: faster than the baseline)
    speedup_ci_low: float  # 95% CI of that median (order statistics of the per-round ratios), widened by the drift
    speedup_ci_high: float  # between processes: where the next process's speed-up lands
    clear_of_one: bool  # that interval excludes 1.0: faster or slower than the baseline beyond the noise
    round_p50_ms: tuple[float, ...]
    round_ci_low: float = 0.0  # the round-to-round 95% CI alone: how sure the median is within this one process
    round_ci_high: float = 0.0

    def verdict(self) -> str:
        """'faster', 'slower' or 'not distinguishable' from the baseline."""
        if not self.clear_of_one:
            return "not distinguishable"
        return "faster" if self.speedup_ci_low > 1.0 else "slower"


@dataclass(frozen=True)
class Comparison:
    """The result of one side-by-side comparison; models[0] is the baseline."""

    models: tuple[ModelTiming, ...]
    rounds: int
    seconds: float
    tight: bool  # every speed-up's round-to-round CI reached target_rel_ci within the caps
    target_rel_ci: float
    drift: float = SIDE_BY_SIDE_DRIFT  # the relative margin each speed-up's interval was widened by

    @property
    def baseline(self) -> ModelTiming:
        """The model every speed-up is taken against."""
        return self.models[0]

    def get(self, name: str) -> ModelTiming:
        """One model's figures by name."""
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(f"no model named {name!r} in this comparison; names are: {[m.name for m in self.models]}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures (the per-round p50s included)."""
        out = asdict(self)
        out["baseline"] = self.baseline.name
        out["interval_covers"] = covers(self.drift)
        for m, timing in zip(out["models"], self.models):
            m["round_p50_ms"] = list(timing.round_p50_ms)
            m["verdict"] = timing.verdict()
        return out


def compare(
    models: Sequence[bytes | str | os.PathLike],
    settings: CompareSettings = CompareSettings(),
    *,
    names: Sequence[str] | None = None,
    providers: Sequence[Provider] = ("CPUExecutionProvider",),
    require_provider: str | None = None,
) -> Comparison:
    """Time the models interleaved on ONNX Runtime; speed-ups are over the first model."""
    labels = _names(models, names)
    prepared = [
        prepare(
            m,
            threads=settings.threads,
            batch_size=settings.batch_size,
            providers=providers,
            require_provider=require_provider,
        )
        for m in models
    ]
    return compare_prepared(prepared, labels, settings)


def compare_prepared(prepared: Sequence[Prepared], names: Sequence[str], settings: CompareSettings) -> Comparison:
    """Warm up open sessions (latency.prepare), then time them interleaved; speed-ups are over the first."""
    for p in prepared:
        p.warm_up(settings.warmup)
    return interleave([_session_burst(p, settings) for p in prepared], names, settings)


def interleave(bursts: Sequence[Burst], names: Sequence[str], settings: CompareSettings) -> Comparison:
    """Run one burst of every model per round, in a shuffled order, until every speed-up is tight or a cap."""
    if len(bursts) < 2 or len(bursts) != len(names):
        raise ConfigError(
            f"a comparison needs at least two models and one name each; got {len(bursts)} models and {len(names)} names"
        )
    rng = np.random.default_rng(settings.seed)
    rounds: list[list[float]] = []
    runs = [0] * len(bursts)
    start = time.perf_counter()
    while len(rounds) < settings.max_rounds:
        row = [0.0] * len(bursts)
        # A shuffled order per round: no model always runs right after the same neighbour or first in the round.
        for i in rng.permutation(len(bursts)):
            row[i], n = bursts[i]()
            runs[i] += n
        rounds.append(row)
        if len(rounds) >= settings.min_rounds and _widest(np.asarray(rounds)) <= settings.target_rel_ci:
            break
        if time.perf_counter() - start >= settings.max_seconds:
            break
    return summarize(
        np.asarray(rounds),
        names,
        runs=runs,
        seconds=time.perf_counter() - start,
        min_rounds=settings.min_rounds,
        target_rel_ci=settings.target_rel_ci,
    )


def interleave_measured(
    measure: Callable[[bytes, TimingSettings], LatencyStats],
    models: Sequence[bytes],
    names: Sequence[str],
    settings: CompareSettings,
) -> Comparison:
    """interleave() where each turn is one whole measurement by `measure` (a device agent opens a session per
    request): a turn warms up `settings.warmup` runs, its session being new, then times for burst_seconds (at least
    burst_min_runs runs)."""
    burst = TimingSettings(
        threads=settings.threads,
        batch_size=settings.batch_size,
        warmup=settings.warmup,
        min_repeats=settings.burst_min_runs,
        max_seconds=settings.burst_seconds,
    )

    def turn(model: bytes) -> Burst:
        def run() -> tuple[float, int]:
            stats = measure(model, burst)
            return stats.p50_ms, stats.repeats

        return run

    return interleave([turn(m) for m in models], names, settings)


def summarize(
    round_p50_ms: np.ndarray,
    names: Sequence[str],
    *,
    runs: Sequence[int],
    seconds: float,
    min_rounds: int,
    target_rel_ci: float,
    drift: float = SIDE_BY_SIDE_DRIFT,
) -> Comparison:
    """Figures from a rounds x models array of per-round p50s (column 0 is the baseline); each speed-up's interval
    is widened by `drift` for what the next process would measure."""
    base = round_p50_ms[:, 0]
    models = []
    for i, name in enumerate(names):
        column = round_p50_ms[:, i]
        ratios = base / column
        round_low, round_high = median_ci(ratios)
        low, high = widen(round_low, round_high, drift) if i else (1.0, 1.0)  # the baseline against itself: exact
        p50_low, p50_high = widen(*median_ci(column), APART_DRIFT)
        models.append(
            ModelTiming(
                name=name,
                p50_ms=float(np.median(column)),
                p50_ci_low_ms=p50_low,
                p50_ci_high_ms=p50_high,
                round_cv=float(column.std() / column.mean()),
                runs=int(runs[i]),
                speedup=float(np.median(ratios)),
                speedup_ci_low=low,
                speedup_ci_high=high,
                clear_of_one=low > 1.0 or high < 1.0,
                round_p50_ms=tuple(float(v) for v in column),
                round_ci_low=round_low,
                round_ci_high=round_high,
            )
        )
    rounds = len(round_p50_ms)
    tight = rounds >= min_rounds and _widest(round_p50_ms) <= target_rel_ci
    return Comparison(tuple(models), rounds, float(seconds), bool(tight), target_rel_ci, drift)


def _widest(round_p50_ms: np.ndarray) -> float:
    """The largest relative half-width among the speed-ups' CIs."""
    base = round_p50_ms[:, :1]
    widest = 0.0
    for ratios in (base / round_p50_ms[:, 1:]).T:
        low, high = median_ci(ratios)
        widest = max(widest, (high - low) / 2 / float(np.median(ratios)))
    return widest


def _session_burst(prepared: Prepared, settings: CompareSettings) -> Burst:
    def burst() -> tuple[float, int]:
        prepared.warm_up(settings.burst_warmup)
        times = timed_runs(
            prepared, max_runs=1_000_000, seconds=settings.burst_seconds, at_least=settings.burst_min_runs
        )
        return float(np.median(times)), len(times)

    return burst


def _names(models: Sequence[bytes | str | os.PathLike], names: Sequence[str] | None) -> list[str]:
    if names is not None:
        if len(names) != len(models) or len(set(names)) != len(names):
            raise ConfigError(f"names: {list(names)!r} must give one distinct name per model ({len(models)} models)")
        return list(names)
    labels = [f"model-{i}" if isinstance(m, bytes) else Path(m).name for i, m in enumerate(models)]
    # Two files of one name in different folders: number them rather than mix them up.
    return [f"{label}#{i}" if labels.count(label) > 1 else label for i, label in enumerate(labels)]
