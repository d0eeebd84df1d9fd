"""The pick: one front member chosen by a stated policy, with the reason written down.

Policies are registered by name; `pick.policy` in an experiment file names one. Adding a policy is one class with
`name`, `from_config`, `describe` and `choose`, registered with `register_pick_policy` (from any module).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from evaluators.errors import SlimsweepError
from evaluators.registry import Registry

if TYPE_CHECKING:
    from search.pareto import Candidate


@dataclass(frozen=True)
class Choice:
    """The chosen candidate and why."""

    candidate: Candidate
    why: str
    met_policy: bool


class PickPolicy(Protocol):
    """A rule that picks one front member, and says why."""

    name: ClassVar[str]

    @classmethod
    def from_config(cls, pick: Any) -> PickPolicy:
        """The policy with the limits of the experiment's `pick:` section."""

    def describe(self) -> str:
        """The policy in words."""

    def choose(self, front: list[Candidate], teacher_latency_ms: float) -> Choice:
        """One member of a non-empty front (latencies verified where re-timed), and the reason."""


PICK_POLICIES: Registry[type[PickPolicy]] = Registry("pick.policy")
register_pick_policy = PICK_POLICIES.register  # usable as a class decorator
check_pick_policy = PICK_POLICIES.check  # for the schema: the name, or ValueError naming the allowed ones


def make_policy(pick: Any) -> PickPolicy:
    """The policy an experiment's `pick:` section names, with its limits."""
    return PICK_POLICIES.get(pick.policy).from_config(pick)


def choose(front: list[Candidate], policy: PickPolicy, teacher_latency_ms: float) -> Choice:
    """Apply the policy to the front; an empty front has nothing to pick."""
    if not front:
        raise SlimsweepError(
            "the front is empty: no trial finished successfully within the constraints, so there "
            "is nothing to pick; widen the constraints or run more trials"
        )
    return policy.choose(front, teacher_latency_ms)


@register_pick_policy
@dataclass(frozen=True)
class FastestWithin:
    """'fastest_within': the lowest latency among members within max_accuracy_drop (and max_latency_ms, if set);
    if none qualifies, the most accurate member, saying so."""

    name: ClassVar[str] = "fastest_within"
    max_accuracy_drop: float = 1.0
    max_latency_ms: float | None = None

    @classmethod
    def from_config(cls, pick: Any) -> FastestWithin:
        """The policy with the `pick:` section's limits."""
        return cls(pick.max_accuracy_drop, pick.max_latency_ms)

    def describe(self) -> str:
        """The policy in words."""
        limit = f" and p50 latency <= {self.max_latency_ms:g} ms" if self.max_latency_ms is not None else ""
        return f"fastest front member with accuracy drop <= {self.max_accuracy_drop:g} pt{limit}"

    def choose(self, front: list[Candidate], teacher_latency_ms: float) -> Choice:
        """The fastest qualifying member, or the most accurate one when none qualifies."""
        eligible = [
            c
            for c in front
            if c.accuracy_drop <= self.max_accuracy_drop
            and (self.max_latency_ms is None or c.latency <= self.max_latency_ms)
        ]
        if eligible:
            best = min(eligible, key=lambda c: (c.latency, -c.accuracy))
            speed = teacher_latency_ms / best.latency
            why = (
                f"{self.describe()}: trial {best.trial} ({best.plan}) at {best.latency:.4f} ms p50, "
                f"{best.accuracy_drop:+.2f} pt from the teacher, {speed:.2f}x the teacher's speed; "
                f"{len(eligible)} of {len(front)} front members qualified"
            )
            if best.latency >= teacher_latency_ms:
                # Never sell a slower model as the faster choice: int8 can be slower than fp32 on a CPU.
                why += "; note: it is not faster than the fp32 teacher on this target"
            return Choice(best, why, True)
        best = max(front, key=lambda c: (c.accuracy, -c.latency))
        why = (
            f"no front member meets the policy ({self.describe()}); picked the most accurate instead: trial "
            f"{best.trial} ({best.plan}), {best.accuracy_drop:+.2f} pt from the teacher, {best.latency:.4f} ms p50"
        )
        return Choice(best, why, False)


Policy = FastestWithin  # the default policy's former name, kept for callers that build it by hand
