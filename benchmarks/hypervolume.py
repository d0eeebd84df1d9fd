"""The hypervolume of a search's front, relative to its own fp32 teacher, with a stated reference point."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from search import optuna_store  # Optuna's own hypervolume helper (what its hypervolume plots use)

# Each candidate becomes (accuracy drop in points, p50 / teacher p50, size / teacher size), all minimized, so that
# sweeps timed minutes apart compare through ratios to a baseline each timed in its own run. The reference point is
# the fp32 teacher at the constraint: only a model within 1 point, faster and smaller than the teacher adds volume.
REFERENCE = (1.0, 1.0, 1.0)
REFERENCE_TEXT = (
    "reference point (accuracy drop 1.0 pt, p50 = 1.0x teacher, size = 1.0x teacher); objectives "
    "accuracy drop, p50 / teacher p50, size / teacher size, all minimized; volume in pt x ratio x ratio"
)


@dataclass(frozen=True)
class Point:
    """One candidate's figures next to its sweep's teacher."""

    accuracy_drop: float
    p50_ms: float
    size_mb: float
    teacher_p50_ms: float
    teacher_size_mb: float

    def loss(self) -> tuple[float, float, float]:
        """The minimized objective vector the hypervolume is taken over."""
        return (self.accuracy_drop, self.p50_ms / self.teacher_p50_ms, self.size_mb / self.teacher_size_mb)


def hypervolume(points: Sequence[Point], reference: Sequence[float] = REFERENCE) -> float:
    """Volume dominated by the points and bounded by the reference point (0 when none is inside it)."""
    ref = np.asarray(reference, dtype=float)
    losses = np.array([p.loss() for p in points], dtype=float).reshape(-1, len(ref))
    inside = losses[np.all(losses < ref, axis=1)]  # a point on or past the reference adds nothing
    if len(inside) == 0:
        return 0.0
    return optuna_store.hypervolume(inside, ref)
