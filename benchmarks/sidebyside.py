"""Speed-ups over a baseline taken side by side (evaluators.compare), with a one-after-another fallback.

The fallback exists only while evaluators.compare is absent from a checkout; its rows say so, since timings taken
one after another drift with the machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from evaluators.latency import TimingSettings, measure


@dataclass(frozen=True)
class Speedup:
    """One model timed next to the baseline (the first model)."""

    name: str
    p50_ms: float
    speedup: float  # baseline p50 / this model's p50
    ci_low: float
    ci_high: float
    method: str  # "interleaved" or "one after another (fallback)"

    @property
    def clear_of_one(self) -> bool:
        """Whether the interval excludes 1.0."""
        return self.ci_low > 1.0 or self.ci_high < 1.0

    def text(self) -> str:
        """'2.91x [2.80, 3.02]'."""
        return f"{self.speedup:.2f}x [{self.ci_low:.2f}, {self.ci_high:.2f}]"


def side_by_side(models: Sequence[bytes], names: Sequence[str], *, max_seconds: float = 20.0) -> list[Speedup]:
    """Each model's speed-up over models[0], timed interleaved when evaluators.compare is available."""
    try:
        from evaluators.compare import compare
    except ImportError:
        return _one_after_another(models, names, max_seconds)
    try:
        from evaluators.compare import CompareSettings
        settings = CompareSettings(max_seconds=max_seconds)
    except ImportError:  # an older compare() takes the timing settings themselves
        settings = TimingSettings(threads=1, batch_size=1)
    try:
        result = compare(list(models), settings, names=list(names))
    except TypeError:  # a compare() without names
        result = compare(list(models), settings)
    rows = getattr(result, "models", result)
    return [Speedup(name=str(_get(r, "name", n)), p50_ms=float(_get(r, "p50_ms")), speedup=float(_get(r, "speedup")),
                    ci_low=float(_get(r, "speedup_ci_low", None, "ci_low")),
                    ci_high=float(_get(r, "speedup_ci_high", None, "ci_high")), method="interleaved")
            for r, n in zip(rows, names)]


def _get(row: object, key: str, default: object = None, alias: str | None = None) -> object:
    # compare() returns dataclasses; accept dicts and the shorter field names too.
    for k in (key, alias):
        if k is None:
            continue
        if isinstance(row, dict) and k in row:
            return row[k]
        if hasattr(row, k):
            return getattr(row, k)
    if default is None:
        raise KeyError(key)
    return default


def _one_after_another(models: Sequence[bytes], names: Sequence[str], max_seconds: float) -> list[Speedup]:
    settings = TimingSettings(threads=1, batch_size=1, warmup=50, min_repeats=200,
                              max_seconds=max(0.5, max_seconds / max(1, len(models))))
    stats = [measure(m, settings) for m in models]
    base = stats[0]
    out = []
    for name, s in zip(names, stats):
        # The ratio's interval from the two medians' intervals (ci_rel is each one's half-width over its median).
        ratio = base.p50_ms / s.p50_ms
        out.append(Speedup(name=name, p50_ms=s.p50_ms, speedup=ratio, ci_low=ratio * (1 - base.ci_rel) / (1 + s.ci_rel),
                           ci_high=ratio * (1 + base.ci_rel) / max(1e-9, 1 - s.ci_rel),
                           method="one after another (fallback)"))
    return out

