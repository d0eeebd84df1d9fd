"""Speed-ups over a baseline for the report, taken side by side by `evaluators.compare` (the one method)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from evaluators.compare import CompareSettings, compare


@dataclass(frozen=True)
class Speedup:
    """One model timed next to the baseline (the first model)."""

    name: str
    p50_ms: float
    speedup: float  # median over rounds of baseline p50 / this model's p50
    ci_low: float
    ci_high: float
    method: str = "interleaved, median of per-round ratios"

    @property
    def clear_of_one(self) -> bool:
        """Whether the interval excludes 1.0."""
        return self.ci_low > 1.0 or self.ci_high < 1.0

    def text(self) -> str:
        """'2.91x [2.80, 3.02]'."""
        return f"{self.speedup:.2f}x [{self.ci_low:.2f}, {self.ci_high:.2f}]"


def side_by_side(models: Sequence[bytes], names: Sequence[str], *, max_seconds: float = 20.0) -> list[Speedup]:
    """Each model's speed-up over models[0], timed interleaved round after round in this process."""
    result = compare(list(models), CompareSettings(max_seconds=max_seconds), names=list(names))
    return [
        Speedup(name=m.name, p50_ms=m.p50_ms, speedup=m.speedup, ci_low=m.speedup_ci_low, ci_high=m.speedup_ci_high)
        for m in result.models
    ]
