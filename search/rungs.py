"""Cheap-then-full: a plan's student trains in rungs (search.early_stopping.rungs, in epochs), and after each the
driver stops a plan that can no longer reach the front, however its training ends.

What is known at a rung: the plan's latency and size (its structure's, measured before training, search/gate.py)
and its accuracy so far. Only the accuracy is still to come, so the rule adds to it an optimistic gain (the rung's
margin, chosen from learning curves measured by benchmarks/curves.py) and stops the plan when even that
optimistic accuracy
  * is below the feasibility floor (constraints.max_accuracy_drop below the teacher): it would be infeasible;
  * with `serve_pick`, is below the pick's bar (pick.max_accuracy_drop below the teacher): the pick cannot take it;
  * or is beaten by a trained, feasible trial that is at least as fast and as small (its measured p50 no higher,
    its size no larger): dominated, so it would not be on the front.
A stopped plan is told to Optuna as PRUNED (a poor region for the sampler, as the gate's stops), records its rung,
its accuracy so far, the trial that dominates it and why, and costs only the epochs it trained (search/budget.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from search.dispatch import Report
from search.gate import Candidate


@dataclass(frozen=True)
class Verdict:
    """The rule's answer at a rung: go on, or stop (naming what stops it)."""

    go_on: bool
    stopped_by: int | None = None  # the trained trial that dominates it; None when a floor stops it
    reason: str = ""

    def __bool__(self) -> bool:
        return self.go_on


GO_ON = Verdict(True)


@dataclass(frozen=True)
class Floors:
    """The accuracies a plan must still be able to reach: the feasibility floor and, serving the pick, its bar."""

    feasible: float | None = None
    pick: float | None = None
    max_size_mb: float | None = None


def judge(
    accuracy: float,
    margin_pt: float,
    latency_ms: float | None,
    size_mb: float | None,
    floors: Floors,
    trained: list[Candidate],
) -> Verdict:
    """Whether a plan with `accuracy` so far can still reach the front with `margin_pt` more points."""
    best = accuracy + margin_pt
    if floors.max_size_mb is not None and size_mb is not None and size_mb > floors.max_size_mb:
        return Verdict(False, None, f"{size_mb:.3f} MB is over constraints.max_size_mb = {floors.max_size_mb:g}")
    if floors.feasible is not None and best < floors.feasible:
        return Verdict(
            False, None, f"{accuracy:.2f}% + {margin_pt:g} pt stays below the feasibility floor {floors.feasible:.2f}%"
        )
    if floors.pick is not None and best < floors.pick:
        return Verdict(False, None, f"{accuracy:.2f}% + {margin_pt:g} pt stays below the pick's bar {floors.pick:.2f}%")
    if latency_ms is None or size_mb is None:
        return GO_ON  # its structure's figures are not known before training (weights decide it): floors only
    over = [c for c in trained if c.accuracy > best and c.p50_ms <= latency_ms and c.size_mb <= size_mb]
    if not over:
        return GO_ON
    by = min(over, key=lambda c: (c.p50_ms, c.size_mb))
    return Verdict(
        False,
        by.number,
        f"{accuracy:.2f}% + {margin_pt:g} pt stays below trial {by.number}'s {by.accuracy:.2f}%, which is as fast "
        f"({by.p50_ms:.4f} <= {latency_ms:.4f} ms) and as small ({by.size_mb:.3f} <= {size_mb:.3f} MB)",
    )


class RungRule:
    """Listener of the driver's loop (search/loop.py): judges each rung report; the loop stops the plans it
    answers a stopping Verdict for."""

    def __init__(self, margins: tuple[float, ...], floors: Floors, *, dominance: bool = True) -> None:
        # dominance: whether p50 and size decide the front beside accuracy (the objectives say; as for the gate)
        self.margins, self.floors, self.dominance = margins, floors, dominance

    @classmethod
    def for_experiment(cls, exp: Any, teacher_accuracy: float, *, dominance: bool = True) -> RungRule:
        """The rule of an experiment file, against its teacher's accuracy."""
        es = exp.search.early_stopping
        floors = Floors(
            feasible=teacher_accuracy - exp.constraints.max_accuracy_drop,
            pick=teacher_accuracy - exp.pick.max_accuracy_drop if es.serve_pick else None,
            max_size_mb=exp.constraints.max_size_mb,
        )
        return cls(es.margins(), floors, dominance=dominance)

    def still_stops(self, metrics: dict[str, float], rung: int, trained: list[Candidate]) -> bool:
        """Whether a plan stopped at `rung` with these figures (its record's) would be stopped there today: a repeat
        of it is answered from that stop only then (the settings may have changed since, or the floors)."""
        if "accuracy_so_far" not in metrics:
            return False
        return not self._judge(float(metrics["accuracy_so_far"]), rung, metrics, trained)

    def _judge(self, accuracy: float, rung: int, metrics: dict[str, float], trained: list[Candidate]) -> Verdict:
        """The rule at `rung` for a plan with `accuracy` so far and its structure's figures in `metrics`; a rung this
        rule has no margin for (another listener's) never stops a plan."""
        if not 0 <= rung < len(self.margins):
            return GO_ON
        latency, size = metrics.get("latency_p50_ms"), metrics.get("size_mb")
        return judge(accuracy, self.margins[rung], latency, size, self.floors, trained if self.dominance else [])

    def rung(self, loop: Any, report: Report) -> Verdict:
        m = report.metrics
        if "accuracy" not in m:
            return GO_ON  # a report this rule cannot read never stops a plan
        return self._judge(float(m["accuracy"]), report.rung, m, loop.ledger.trained)
