"""The budget's ledger: what the study holds, counted as it changes (every driver's trials), so the loop's rules
(spent, wanted, past the budget, out of plans, the gate's candidates, an identical earlier plan) cost the same at
trial 3,000 as at trial 3. Each sync reads only trials new since the last one and those still open."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from search.gate import Candidate
from search.study import marked_interrupted, read, retry_history

# Proposals that cost no trial (plans dominated before training, search/gate.py) may run to this many times the
# budget; past it the sampler finds nothing left in the space that could reach the front.
MAX_ASKS_PER_TRIAL = 10


def plan_key(plan: dict[str, Any]) -> str:
    """A plan's identity, every knob compared, as the storage gives it back (search.study.reusable's equality)."""
    return json.dumps(json.loads(json.dumps(plan)), sort_keys=True)


@dataclass
class Ledger:
    """Counts of the study's trials, kept up to date by `sync`."""

    budget: int
    directions: list[StudyDirection] = field(default_factory=list)
    asks: int = 0  # plans this run asked Optuna for (the ask cap's count)
    out_of_plans: bool = False
    spent: int = 0  # finished trials of the budget (not made on the way, not interrupted)
    failed: int = 0
    made: int = 0  # models made on the way
    running: set[int] = field(default_factory=set)  # RUNNING in the whole study, any driver
    trained: list[Candidate] = field(default_factory=list)  # feasible, trained, not reused: the gate's candidates
    front: list[tuple[int, tuple[float, ...]]] = field(default_factory=list)  # feasible COMPLETE, non-dominated
    _seen: int = 0  # trials[0:_seen] were looked at
    _open: set[int] = field(default_factory=set)  # looked at while not finished yet
    _spent: set[int] = field(default_factory=set)
    _failed: set[int] = field(default_factory=set)
    _interrupted: set[int] = field(default_factory=set)
    _plans: dict[str, dict[TrialState, int]] = field(default_factory=dict)  # plan key -> earliest trial by state

    def sync(self, study: optuna.Study) -> None:
        """Take in the trials new since the last sync and those that were still open then."""
        trials = study.get_trials(deepcopy=False)
        look = sorted(n for n in self._open if n < self._seen) + list(range(self._seen, len(trials)))
        self._seen = len(trials)
        for number in look:
            self._take(trials[number])

    def _take(self, t: FrozenTrial) -> None:
        number = t.number
        for old in retry_history(t):  # run again under this number: the old one never counts
            self._interrupt(old)
        if t.state == TrialState.RUNNING:
            self.running.add(number)
        else:
            self.running.discard(number)
        if not t.state.is_finished():
            self._open.add(number)
            return
        self._open.discard(number)
        if marked_interrupted(t):  # the ledger reads study.interrupted's marks one trial at a time
            self._interrupt(number)
            return
        if t.state == TrialState.PRUNED:
            self._index(t)
            return
        if number in self._interrupted:
            return
        rec = read(t)
        if rec.made_by is not None:
            self.made += 1
        else:
            self._spent.add(number)
            if t.state == TrialState.FAIL:
                self._failed.add(number)
        self.spent, self.failed = len(self._spent), len(self._failed)
        if t.state != TrialState.COMPLETE:
            return
        self._index(t)
        if rec.feasible and not rec.skipped_training and rec.reuse_of is None:
            m = rec.metrics
            self.trained.append(Candidate(number, m["accuracy"], m["latency_p50_ms"], m["size_mb"]))
        if rec.feasible and t.values is not None:
            self._add_to_front(number, tuple(t.values))

    def _interrupt(self, number: int) -> None:
        self._interrupted.add(number)
        self._spent.discard(number)
        self._failed.discard(number)
        self.spent, self.failed = len(self._spent), len(self._failed)

    def _index(self, t: FrozenTrial) -> None:
        plan = read(t).plan
        if plan:
            earliest = self._plans.setdefault(plan_key(plan), {})
            earliest[t.state] = min(earliest.get(t.state, t.number), t.number)  # an old trial may finish late

    def _add_to_front(self, number: int, values: tuple[float, ...]) -> None:
        """Optuna's best_trials, kept as trials arrive: a point no member dominates joins, the ones it dominates go."""
        signs = [1.0 if d == StudyDirection.MINIMIZE else -1.0 for d in self.directions] or [1.0] * len(values)
        point = tuple(s * v for s, v in zip(signs, values, strict=False))
        if any(_dominates(p, point) for _, p in self.front):
            return
        self.front = [(n, p) for n, p in self.front if not _dominates(point, p)] + [(number, point)]

    def reusable(self, study: optuna.Study, plan: dict[str, Any]) -> FrozenTrial | None:
        """The earliest COMPLETE trial that ran exactly this plan, else the earliest PRUNED one (search.study.reusable,
        from the ledger's index)."""
        found = self._plans.get(plan_key(plan), {})
        for state in (TrialState.COMPLETE, TrialState.PRUNED):
            if state in found:
                return study.get_trials(deepcopy=False)[found[state]]
        return None

    def past_budget(self, number: int) -> bool:
        """Whether trial `number`, just asked, takes the study past its budget (search.study.past_budget): the
        latest-numbered asks past the budget give way."""
        flying = sorted(self.running)
        over = self.spent + len(flying) - self.budget
        return over > 0 and number in flying[-over:]

    def check_out_of_plans(self) -> bool:
        """Whether this run has asked as many plans as a sweep of this budget may, with the budget still unmet."""
        out = self.asks >= MAX_ASKS_PER_TRIAL * self.budget and self.spent < self.budget
        self.out_of_plans |= out
        return out

    def wanted(self) -> int:
        """Trials still to start: the budget less those finished (by any driver) and those in flight."""
        left = self.budget - self.spent - len(self.running)
        return 0 if left <= 0 or self.check_out_of_plans() else left

    def done(self) -> bool:
        """The budget is met, or this run ran out of plans."""
        return self.spent >= self.budget or self.check_out_of_plans()


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=False)) and a != b
