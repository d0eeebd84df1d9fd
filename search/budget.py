"""What a finished trial costs of the sweep's budget, in the budget's unit (search.config.Budget): trainings, student
epochs or trial seconds. The ledger (search/ledger.py) sums it; the summary, `status` and the parent run show it."""

from __future__ import annotations

from dataclasses import dataclass, field

from optuna.trial import TrialState

from search.record import TrialRecord


def trial_cost(rec: TrialRecord, state: TrialState, unit: str) -> float:
    """The compute a finished trial took of the budget: nothing for a repeat answered from an earlier trial, a plan
    the gate stopped before training, a trial that gave way past the budget, and a model made on a trial's way."""
    info = rec.info
    if rec.made_by is not None or rec.reuse_of is not None:
        return 0.0
    if state == TrialState.PRUNED and info.stopped_at_rung is None:
        return 0.0
    if unit == "epochs":
        used = float(info.epochs_used or 0)
        # A failure costs at least one epoch (or a record older than rungs, none counted): a plan that keeps failing
        # still uses the budget up.
        return max(used, 1.0) if state == TrialState.FAIL or info.epochs_used is None else used
    if unit == "seconds":
        clock = info.clock or {}
        if "worker_began" in clock and "worker_ended" in clock:
            return max(0.0, float(clock["worker_ended"]) - float(clock["worker_began"]))
        if "submitted" in clock and "received" in clock:  # a timed-out or lost attempt: the driver's own stamps
            return max(0.0, float(clock["received"]) - float(clock["submitted"]))
        return max(float(sum(rec.stages.values())), 1.0 if state == TrialState.FAIL else 0.0)
    if info.stopped_at_rung is not None and info.epochs_planned:
        return float(info.epochs_used or 0) / float(info.epochs_planned)
    return 1.0


def full_cost(rec: TrialRecord, unit: str) -> float | None:
    """What a trial that trained to its end cost, as an estimate of a plan's cost before it runs; None when this
    trial is no such estimate (it stopped early, failed or was answered without training)."""
    info = rec.info
    if rec.made_by is not None or rec.reuse_of is not None or info.skipped_training or info.stopped_at_rung is not None:
        return None
    if unit == "epochs":
        return float(info.epochs_used) if info.epochs_used else None
    if unit == "seconds":
        clock = info.clock or {}
        return float(clock["worker_ended"]) - float(clock["worker_began"]) if "worker_began" in clock else None
    return 1.0


@dataclass
class Spending:
    """The compute a sweep spent, plans tried, and those stopped early at each rung with the epochs that saved."""

    unit: str
    budget: float
    spent: float = 0.0
    plans_tried: int = 0
    stopped_at_rung: dict[int, int] = field(default_factory=dict)  # rung index -> plans stopped there
    epochs_used: float = 0.0
    epochs_saved: float = 0.0  # epochs the stopped plans would have trained to their end

    def as_dict(self) -> dict[str, object]:
        """For `status --json`, the summary and the parent run."""
        return {
            "unit": self.unit,
            "budget": self.budget,
            "spent": round(self.spent, 4),
            "plans_tried": self.plans_tried,
            "stopped_at_rung": {str(k): v for k, v in sorted(self.stopped_at_rung.items())},
            "epochs_used": round(self.epochs_used, 4),
            "epochs_saved": round(self.epochs_saved, 4),
        }

    def metrics(self) -> dict[str, float]:
        """The parent run's metrics."""
        out = {
            f"compute_spent_{self.unit}": self.spent,
            "plans_tried": float(self.plans_tried),
            "plans_stopped_early": float(sum(self.stopped_at_rung.values())),
            "student_epochs_used": self.epochs_used,
            "student_epochs_saved": self.epochs_saved,
        }
        out.update({f"plans_stopped_at_rung_{k}": float(v) for k, v in self.stopped_at_rung.items()})
        return out


def describe_spending(s: Spending) -> str:
    """One line: the compute spent of the budget, plans tried, and those stopped early with what that saved."""
    line = f"{s.spent:.4g} of {s.budget:g} {s.unit} spent on {s.plans_tried} plans"
    stopped = sum(s.stopped_at_rung.values())
    if stopped:
        rungs = ", ".join(f"{n} at rung {k}" for k, n in sorted(s.stopped_at_rung.items()))
        line += (
            f"; {stopped} stopped early ({rungs}; search.early_stopping), {s.epochs_saved:.4g} of their epochs saved"
        )
    return line
