"""Latency first, against the front: a plan whose untrained structure is already slower and larger than a finished
candidate at the top of the accuracy range cannot reach the front, so it is not trained.

A plan's latency and size depend on its structure alone (the graph's shapes and scheme), so they are known before
training from a probe of the untrained structure. Its accuracy is not known; but no plan can be measurably more
accurate than the best one measured so far, up to the validation set's noise. So once a candidate sits within that
noise of the best accuracy, every plan that is at once slower and larger than it is dominated whatever training
gives it. Such a plan is stopped after the probe and told to Optuna as PRUNED: TPE learns its region is poor, and
it costs no trial of the budget.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from evaluators.compare import APART_DRIFT, clearly_below

# How much faster a member must be than a structure to stop it: its median and the structure's are timed apart, so
# "faster" needs a gap beyond the drift between processes that benchmarks/honesty.py measures (the same margin the
# pick's tie rule gives medians taken apart); within it the two are a tie on speed, and the plan is left to its
# training. A structure measured twice is never stopped by its own twin.
CLEAR_MARGIN = APART_DRIFT
# How much smaller, on size (not a timing: no drift, but a sibling differing only in training settings has the same
# size, so it is never stopped by its own twin).
SIZE_MARGIN = 0.05


def accuracy_noise_pt(accuracy_pct: float, n_val: int) -> float:
    """One standard error of an accuracy measured on `n_val` images, in points (binomial)."""
    p = min(max(accuracy_pct / 100.0, 0.0), 1.0)
    return 100.0 * math.sqrt(max(p * (1.0 - p), 0.25 / max(n_val, 1)) / max(n_val, 1))


@dataclass(frozen=True)
class Candidate:
    """A finished, trained candidate's figures."""

    number: int
    accuracy: float  # % on the validation split
    p50_ms: float
    size_mb: float


@dataclass(frozen=True)
class Bar:
    """The candidates a new plan must not be slower and larger than, and the accuracy they hold."""

    members: tuple[Candidate, ...] = ()
    accuracy_floor: float = 0.0  # members are at or above this: the best accuracy less one standard error

    def __bool__(self) -> bool:
        return bool(self.members)

    def dominator(self, p50_ms: float, size_mb: float) -> Candidate | None:
        """The fastest member at least as fast and as small as a structure with these figures, and clearly faster
        (beyond the drift between processes) or clearly smaller: the same structure trained otherwise (at another
        temperature, say) is left to its training."""
        over = [
            c
            for c in self.members
            if c.p50_ms <= p50_ms
            and c.size_mb <= size_mb
            and (clearly_below(c.p50_ms, p50_ms, CLEAR_MARGIN) or c.size_mb < (1.0 - SIZE_MARGIN) * size_mb)
        ]
        return min(over, key=lambda c: c.p50_ms) if over else None


def bar(candidates: Iterable[Candidate], teacher_accuracy: float, n_val: int) -> Bar:
    """The bar from the trained candidates so far: those within one standard error of the best accuracy measured
    (the teacher's included, so a model far below it never sets the bar)."""
    found = list(candidates)
    best = max([teacher_accuracy, *(c.accuracy for c in found)])
    floor = best - accuracy_noise_pt(best, n_val)
    return Bar(tuple(c for c in found if c.accuracy >= floor), floor)
