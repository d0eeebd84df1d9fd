"""The budget's ledger: what the study holds, counted as it changes (every driver's trials), so the loop's rules
(spent, wanted, past the budget, out of plans, the gate's candidates, an identical earlier plan) cost the same at
trial 3,000 as at trial 3. Each sync reads only trials new since the last one and those still open."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from search.budget import Spending, full_cost, trial_cost
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

    budget: float  # in `unit`: trainings (a plan trained to its end costs one), student epochs, or trial seconds
    directions: list[StudyDirection] = field(default_factory=list)
    unit: str = "trainings"
    trials: int = 0  # the file's search.trials: a compute budget's guess at a plan's cost until one has trained
    asks: int = 0  # plans this run asked Optuna for (the ask cap's count)
    out_of_plans: bool = False
    spent: int = 0  # finished trials of the budget (not made on the way, not interrupted)
    cost: float = 0.0  # what they cost, in `unit` (search/budget.py)
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
    _costs: dict[int, float] = field(default_factory=dict)  # trial -> its cost (those that cost something)
    _full: dict[int, float] = field(default_factory=dict)  # trial -> its cost, for those trained to their end
    _full_sum: float = 0.0  # the sum of _full's costs
    _rungs: dict[int, tuple[int, float, float]] = field(default_factory=dict)  # stopped: (rung, epochs used, saved)
    _epochs: dict[int, float] = field(default_factory=dict)  # trial -> student epochs it trained

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
        if number in self._interrupted:
            return
        rec = read(t)
        if t.state == TrialState.PRUNED:
            self._index(t)
            if rec.info.stopped_at_rung is not None and rec.reuse_of is None:  # stopped at a rung: a plan tried
                self._charge(number, rec, t.state)
                used, planned = float(rec.info.epochs_used or 0), float(rec.info.epochs_planned or 0)
                self._rungs[number] = (rec.info.stopped_at_rung, used, max(0.0, planned - used))
            return
        if rec.made_by is not None:
            self.made += 1
        elif rec.reuse_of is None:  # a repeat answered from an earlier trial costs nothing
            self._charge(number, rec, t.state)
            if t.state == TrialState.FAIL:
                self._failed.add(number)
            full = full_cost(rec, self.unit) if t.state == TrialState.COMPLETE else None
            if full is not None:
                self._full_sum += full - self._full.get(number, 0.0)
                self._full[number] = full
        self.spent, self.failed = len(self._spent), len(self._failed)
        if t.state != TrialState.COMPLETE:
            return
        self._index(t)
        if rec.feasible and not rec.skipped_training and rec.reuse_of is None:
            m = rec.metrics
            self.trained.append(Candidate(number, m["accuracy"], m["latency_p50_ms"], m["size_mb"]))
        if rec.feasible and t.values is not None:
            self._add_to_front(number, tuple(t.values))

    def _charge(self, number: int, rec: Any, state: TrialState) -> None:
        self._spent.add(number)
        cost = trial_cost(rec, state, self.unit)
        self.cost += cost - self._costs.get(number, 0.0)  # kept as a running sum: the same at trial 3,000 as at 3
        self._costs[number] = cost
        self._epochs[number] = float(rec.info.epochs_used or 0)
        self.spent = len(self._spent)

    def _interrupt(self, number: int) -> None:
        self._interrupted.add(number)
        self._spent.discard(number)
        self._failed.discard(number)
        self.cost -= self._costs.pop(number, 0.0)
        self._full_sum -= self._full.pop(number, 0.0)
        for kept in (self._rungs, self._epochs):
            kept.pop(number, None)
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

    def plan_cost(self) -> float:
        """What one plan is expected to cost, in the budget's unit: the mean of the plans trained to their end so
        far; before any, the budget shared over the file's `trials`."""
        if self.unit == "trainings":
            return 1.0
        if self._full:
            return max(self._full_sum / len(self._full), 1e-9)
        return self.budget / max(self.trials, 1)

    def room(self, *, in_flight: bool = True) -> int:
        """Plans that still fit: the budget less what finished trials cost and (`in_flight`) what those in flight
        will cost, rounded to the nearest plan (a budget in trainings, every plan trained whole: the trials left)."""
        left = (self.budget - self.cost) / self.plan_cost() - (len(self.running) if in_flight else 0)
        return math.floor(left + 0.5 + 1e-9)

    def past_budget(self, number: int) -> bool:
        """Whether trial `number`, just asked, takes the study past its budget (search.study.past_budget): the
        latest-numbered asks past the budget give way."""
        flying = sorted(self.running)
        over = -self.room()
        return over > 0 and number in flying[-over:]

    def check_out_of_plans(self) -> bool:
        """Whether this run has asked as many plans as a sweep of this budget may, with the budget still unmet."""
        plans = max(1, math.ceil(self.budget / self.plan_cost()))
        out = self.asks >= MAX_ASKS_PER_TRIAL * plans and self.room(in_flight=False) > 0
        self.out_of_plans |= out
        return out

    def wanted(self) -> int:
        """Trials still to start: the plans the budget still holds less those in flight (by any driver)."""
        left = self.room()
        return 0 if left <= 0 or self.check_out_of_plans() else left

    def done(self) -> bool:
        """The budget is met, or this run ran out of plans."""
        return self.room(in_flight=False) <= 0 or self.check_out_of_plans()

    def spending(self) -> Spending:
        """The compute spent so far, plans tried and those stopped early at each rung."""
        out = Spending(self.unit, self.budget, spent=self.cost, plans_tried=self.spent)
        out.epochs_used = sum(self._epochs.values())
        for rung, _, saved in self._rungs.values():
            out.stopped_at_rung[rung] = out.stopped_at_rung.get(rung, 0) + 1
            out.epochs_saved += saved
        return out


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=False)) and a != b
