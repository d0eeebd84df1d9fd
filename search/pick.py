"""The pick: one front member chosen by a stated policy, with the reason written down."""

from __future__ import annotations

from dataclasses import dataclass

from evaluators.errors import SlimsweepError
from search.pareto import Candidate


@dataclass(frozen=True)
class Policy:
    """'fastest_within': the lowest latency among members within max_accuracy_drop (and max_latency_ms, if set)."""

    max_accuracy_drop: float = 1.0
    max_latency_ms: float | None = None

    def describe(self) -> str:
        """The policy in words."""
        limit = f" and p50 latency <= {self.max_latency_ms:g} ms" if self.max_latency_ms is not None else ""
        return f"fastest front member with accuracy drop <= {self.max_accuracy_drop:g} pt{limit}"


@dataclass(frozen=True)
class Choice:
    """The chosen candidate and why."""

    candidate: Candidate
    why: str
    met_policy: bool


def choose(front: list[Candidate], policy: Policy, teacher_latency_ms: float) -> Choice:
    """Apply the policy to the front; if nothing qualifies, fall back to the most accurate member, saying so."""
    if not front:
        raise SlimsweepError("the front is empty: no trial finished successfully within the constraints, so there "
                             "is nothing to pick; widen the constraints or run more trials")
    eligible = [c for c in front if c.accuracy_drop <= policy.max_accuracy_drop
                and (policy.max_latency_ms is None or c.latency <= policy.max_latency_ms)]
    if eligible:
        best = min(eligible, key=lambda c: (c.latency, -c.accuracy))
        speed = teacher_latency_ms / best.latency
        why = (f"{policy.describe()}: trial {best.trial} ({best.plan}) at {best.latency:.4f} ms p50, "
               f"{best.accuracy_drop:+.2f} pt from the teacher, {speed:.2f}x the teacher's speed; "
               f"{len(eligible)} of {len(front)} front members qualified")
        if best.latency >= teacher_latency_ms:
            # Never sell a slower model as the faster choice (FIELD-NOTES: int8 can be slower than fp32).
            why += "; note: it is not faster than the fp32 teacher on this target"
        return Choice(best, why, True)
    best = max(front, key=lambda c: (c.accuracy, -c.latency))
    why = (f"no front member meets the policy ({policy.describe()}); picked the most accurate instead: trial "
           f"{best.trial} ({best.plan}), {best.accuracy_drop:+.2f} pt from the teacher, {best.latency:.4f} ms p50")
    return Choice(best, why, False)
