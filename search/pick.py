"""The pick: one front member chosen by a stated policy, with the reason written down.

Policies are registered by name; `pick.policy` in an experiment file names one. Adding a policy is one class with
`name`, `from_config`, `describe` and `choose`, registered with `register_pick_policy` (from any module). A policy
with settings of its own subclasses PolicyWithSettings: its pydantic fields are its section of the file,
`pick.<name>`, validated with the rest of the file, and the validated section is the policy itself.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from evaluators.compare import APART_COVERS, INTERVAL_COVERS, clearly_below, overlap
from evaluators.errors import SlimsweepError
from evaluators.registry import Registry
from spaces.knobs import Strict

if TYPE_CHECKING:
    from search.pareto import Candidate


@dataclass(frozen=True)
class Choice:
    """The chosen candidate and why."""

    candidate: Candidate
    why: str
    met_policy: bool
    tied: tuple[int, ...] = ()  # qualifying members not measurably faster or slower than the pick (trial numbers)
    # What the pick won on: 'speed', or among ties 'accuracy' / 'size' / 'median speed (...)', or per tied member
    # where they differ ('accuracy against trial 46, median speed against trial 9'); '' when a policy says not.
    won_by: str = ""


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


class PolicyWithSettings(Strict):
    """A pick policy with settings of its own: its pydantic fields are the section `pick.<name>` of the experiment
    file (validated at the edge with the rest of it; defaults where the file gives none), and the validated section
    is the policy. Subclass it with `name`, the fields, `describe` and `choose`; register it with
    register_pick_policy."""

    name: ClassVar[str]

    @classmethod
    def from_config(cls, pick: Any) -> PickPolicy:
        """The validated section `pick.<name>` (the defaults when the file has none)."""
        section = pick.section(cls.name) if hasattr(pick, "section") else None
        return section if section is not None else cls()

    @abstractmethod
    def describe(self) -> str:
        """The policy in words, with its settings."""

    @abstractmethod
    def choose(self, front: list[Candidate], teacher_latency_ms: float) -> Choice:
        """One member of a non-empty front, and the reason."""


PICK_POLICIES: Registry[type[PickPolicy]] = Registry("pick.policy")


def register_pick_policy(policy: type[PickPolicy]) -> type[PickPolicy]:
    """Make a policy a choice of `pick.policy` in every experiment file; usable as a class decorator."""
    if policy.name in ("policy", "max_accuracy_drop", "max_latency_ms", "min_throughput_per_s", "verify_seconds"):
        raise ValueError(f"{policy.name!r} is taken by the pick section itself; choose another policy name")
    return PICK_POLICIES.register(policy)


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


def tied(a: Candidate, b: Candidate) -> bool:
    """Whether neither member is measurably faster than the other: their side-by-side speed-up intervals overlap
    (verified), or, where either is not verified, neither in-sweep median is below the other by more than the drift
    between processes."""
    if None not in (a.speedup_ci_low, a.speedup_ci_high, b.speedup_ci_low, b.speedup_ci_high):
        return overlap((a.speedup_ci_low, a.speedup_ci_high), (b.speedup_ci_low, b.speedup_ci_high))
    return not (clearly_below(a.latency, b.latency) or clearly_below(b.latency, a.latency))


def evidence(members: list[Candidate]) -> str:
    """What the speed comparison rests on, in words."""
    if all(c.speedup_ci_low is not None for c in members):
        return INTERVAL_COVERS
    return APART_COVERS + ", since the front was not verified side by side"


def settle(eligible: list[Candidate], teacher_latency_ms: float) -> tuple[Candidate, Candidate]:
    """The fastest member by median, and the pick: the most accurate (then smallest) member tied with it, moved on
    while a member tied with the pick is more accurate (or as accurate and smaller), until none is."""
    fastest = max(eligible, key=lambda c: (_pace(c, teacher_latency_ms), c.accuracy, -c.size_mb))
    pick = fastest
    while True:
        better = [c for c in eligible if tied(c, pick) and _better(c, pick)]
        if not better:
            return fastest, pick
        # Each step raises (accuracy, -size) strictly, so this ends within len(eligible) steps.
        pick = max(better, key=lambda c: (c.accuracy, -c.size_mb, _pace(c, teacher_latency_ms)))


def won_on(pick: Candidate, ties: list[Candidate]) -> str:
    """What the pick won on against the members tied with it on speed; where the ties differ, against which."""
    if not ties:
        return "speed"
    # settle() leaves no tied member better than the pick: each is less accurate, or as accurate and no smaller.
    groups = [
        ("accuracy", [c for c in ties if c.accuracy < pick.accuracy]),
        ("size", [c for c in ties if c.accuracy >= pick.accuracy and c.size_mb > pick.size_mb]),
        (
            "median speed (the tied members are as accurate and as large)",
            [c for c in ties if c.accuracy >= pick.accuracy and c.size_mb <= pick.size_mb],
        ),
    ]
    present = [(reason, members) for reason, members in groups if members]
    if len(present) == 1:
        return present[0][0]
    # Mixed ties: one word for all would be false of some (a member 1 pt less accurate is not "as accurate").
    return ", ".join(f"{reason.split(' (')[0]} against {_trials(members)}" for reason, members in present)


def _trials(members: list[Candidate]) -> str:
    return ("trial " if len(members) == 1 else "trials ") + ", ".join(str(c.trial) for c in members)


def _better(c: Candidate, than: Candidate) -> bool:
    return c.accuracy > than.accuracy or (c.accuracy == than.accuracy and c.size_mb < than.size_mb)


def _pace(c: Candidate, teacher_latency_ms: float) -> float:
    """The median speed-up over the teacher: side by side when verified, else the ratio of the in-sweep medians."""
    return c.speedup if c.speedup is not None else teacher_latency_ms / c.latency


def _speed(c: Candidate, teacher_latency_ms: float) -> str:
    if c.speedup is not None and c.speedup_ci_low is not None and c.speedup_ci_high is not None:
        return f"{c.speedup:.2f}x the teacher's speed [{c.speedup_ci_low:.2f}, {c.speedup_ci_high:.2f}]"
    return f"{c.latency:.4f} ms p50, {teacher_latency_ms / c.latency:.2f}x the teacher's speed"


@register_pick_policy
@dataclass(frozen=True)
class FastestWithin:
    """'fastest_within': the fastest member within max_accuracy_drop (and max_latency_ms, if set), where "faster"
    means measurably faster: members whose speed cannot be told apart are a tie, won by the more accurate, then the
    smaller. If none qualifies, the most accurate member, saying so."""

    name: ClassVar[str] = "fastest_within"
    max_accuracy_drop: float = 1.0
    max_latency_ms: float | None = None
    min_throughput_per_s: float | None = None

    @classmethod
    def from_config(cls, pick: Any) -> FastestWithin:
        """The policy with the `pick:` section's limits."""
        return cls(pick.max_accuracy_drop, pick.max_latency_ms, getattr(pick, "min_throughput_per_s", None))

    def describe(self) -> str:
        """The policy in words."""
        limit = f" and p50 latency <= {self.max_latency_ms:g} ms" if self.max_latency_ms is not None else ""
        if self.min_throughput_per_s is not None:
            limit += f" and throughput >= {self.min_throughput_per_s:g} items/s"
        return (
            f"fastest front member with accuracy drop <= {self.max_accuracy_drop:g} pt{limit}; members not "
            "measurably faster than one another are a tie, won by accuracy, then size"
        )

    def choose(self, front: list[Candidate], teacher_latency_ms: float) -> Choice:
        """The measurably fastest qualifying member, ties won by accuracy then size; or the most accurate member
        when none qualifies."""
        eligible = [
            c
            for c in front
            if c.accuracy_drop <= self.max_accuracy_drop
            and (self.max_latency_ms is None or c.latency <= self.max_latency_ms)
            and (self.min_throughput_per_s is None or (c.throughput_per_s or 0.0) >= self.min_throughput_per_s)
        ]
        if eligible:
            return self._among(eligible, len(front), teacher_latency_ms)
        best = max(front, key=lambda c: (c.accuracy, -c.latency))
        why = (
            f"no front member meets the policy ({self.describe()}); picked the most accurate instead: trial "
            f"{best.trial} ({best.plan}), {best.accuracy_drop:+.2f} pt from the teacher, {best.latency:.4f} ms p50"
        )
        return Choice(best, why, False, won_by="accuracy (no member met the policy)")

    def _among(self, eligible: list[Candidate], n_front: int, teacher_latency_ms: float) -> Choice:
        fastest, best = settle(eligible, teacher_latency_ms)
        ties = sorted((c for c in eligible if c is not best and tied(c, best)), key=lambda c: -c.accuracy)
        won = won_on(best, ties)
        why = (
            f"{self.describe()}: trial {best.trial} ({best.plan}), {best.accuracy_drop:+.2f} pt from the teacher, "
            f"{_speed(best, teacher_latency_ms)}; {len(eligible)} of {n_front} front members qualified"
        )
        if ties:
            listed = ", ".join(f"trial {c.trial} ({c.accuracy:.2f}%, {_speed(c, teacher_latency_ms)})" for c in ties)
            why += (
                f"; tied on speed with {listed}: neither is measurably faster ({evidence(eligible)}), so the pick "
                f"won on {won}"
            )
        else:
            why += f"; measurably faster than every other qualifying member ({evidence(eligible)})"
        if best is not fastest and not tied(best, fastest):
            why += (
                f"; trial {fastest.trial} has the highest median speed ({_speed(fastest, teacher_latency_ms)}) but "
                f"is less accurate, and the pick is reached from it through members tied on speed"
            )
        if _not_faster_than_teacher(best, teacher_latency_ms):
            # Never sell a slower model as the faster choice: int8 can be slower than fp32 on a CPU.
            why += "; note: it is not measurably faster than the fp32 teacher on this target"
        return Choice(best, why, True, tuple(c.trial for c in ties), won)


def _not_faster_than_teacher(c: Candidate, teacher_latency_ms: float) -> bool:
    if c.speedup_ci_low is not None:
        return c.speedup_ci_low <= 1.0
    return c.latency >= teacher_latency_ms


Policy = FastestWithin  # the default policy's former name, kept for callers that build it by hand
