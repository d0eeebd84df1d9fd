"""A covering start-up design for a joint search: the first trials take every value of every categorical knob.

Over a joint space of a few hundred plans, a small budget's random start-up often never tries some knob's extreme
values (the smallest student, the strongest pruning), and TPE then models only what it saw. Here each knob keeps its
own counter over a seeded shuffle of its choices, advanced only when the knob is asked for, so a conditional knob
(a student's width, asked only for students) still covers all its values. Ranges are left to the sampler.
"""

from __future__ import annotations

import random
from typing import Any

import optuna

from spaces.plan import Space, sample


class _DesignTrial:
    """A TrialLike that answers each categorical knob from that knob's own cycle, and records the answers."""

    def __init__(self, cycles: dict[str, list[Any]], counters: dict[str, int], rng: random.Random) -> None:
        self.cycles, self.counters, self.rng = cycles, counters, rng
        self.params: dict[str, Any] = {}

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        if name not in self.cycles:
            order = list(choices)
            self.rng.shuffle(order)
            self.cycles[name] = order
        cycle = self.cycles[name]
        value = cycle[self.counters.get(name, 0) % len(cycle)]
        self.counters[name] = self.counters.get(name, 0) + 1
        self.params[name] = value
        return value

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        return (low * high) ** 0.5 if log else (low + high) / 2  # not enqueued: the sampler chooses ranges


def design(space: Space, seed: int = 0, limit: int = 64) -> list[dict[str, Any]]:
    """Plans (categorical params only) until every value of every knob met so far was taken at least once."""
    rng = random.Random(seed)
    cycles: dict[str, list[Any]] = {}
    counters: dict[str, int] = {}
    plans: list[dict[str, Any]] = []
    while len(plans) < limit:
        trial = _DesignTrial(cycles, counters, rng)
        sample(trial, space)
        if trial.params not in plans:
            plans.append(trial.params)
        if all(counters.get(name, 0) >= len(cycle) for name, cycle in cycles.items()):
            break
    return plans


def enqueue_design(study: optuna.Study, space: Space, seed: int = 0, budget: int | None = None) -> int:
    """Enqueue the design as a fresh study's first trials (at most a third of the budget); return how many."""
    if study.get_trials(deepcopy=False):
        return 0  # a resumed study already has its start-up
    plans = design(space, seed)
    if budget is not None:
        plans = plans[: max(1, budget // 3)]
    for params in plans:
        study.enqueue_trial(params, skip_if_exists=True)
    return len(plans)
