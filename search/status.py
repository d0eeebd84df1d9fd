"""`slimsweep status`: where a sweep stands (budget, done, failed, running, front, pick), read from its stores."""

from __future__ import annotations

import json
from typing import Any

from optuna.trial import TrialState

from evaluators.secrets import mask_secrets
from search.budget import Spending, describe_spending
from search.config import Experiment
from search.handover import pending
from search.ledger import Ledger
from search.pareto import front as pareto_front
from search.stored import load_existing
from search.study import dominated, on_the_way, read, spent


def sweep_status(exp: Experiment) -> dict[str, Any]:
    """The sweep's state as plain data; reads the study and the output folder, writes nothing."""
    study = load_existing(exp)  # never creates a study for a misspelt name
    done = spent(study)
    failed = [t.number for t in done if t.state == TrialState.FAIL]
    running = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    waiting = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))]
    complete = any(t.state == TrialState.COMPLETE for t in done)
    front = sorted(c.trial for c in pareto_front(study)) if complete else []
    card_path = exp.out / "model_card.json"
    card = json.loads(card_path.read_text()) if card_path.is_file() else None
    left = pending(exp.out)
    unit, amount = exp.search.compute_budget()
    ledger = Ledger(amount, list(study.directions), unit=unit, trials=exp.search.trials)
    ledger.sync(study)
    return {
        "experiment": exp.name,
        "budget": amount,  # in budget_unit: trainings (search.trials unless search.budget says otherwise)
        "budget_unit": unit,
        "done": ledger.spent,  # plans tried: finished or stopped at a rung (repeats answered at no cost aside)
        "complete": len(done) - len(failed),
        "failed": len(failed),
        "failed_trials": {str(n): (read(study.trials[n]).failure or "")[:200] for n in failed},
        "running": len(running),
        "running_trials": running,
        "queued": len(waiting),
        "on_the_way": len(on_the_way(study)),  # models trials made on their way: no trial of the budget
        "dominated": len(dominated(study)),  # plans stopped before training (search/gate.py): no trial of the budget
        "finished_budget": ledger.done(),
        "compute": ledger.spending().as_dict(),  # spent in the budget's unit, plans tried, stopped at each rung
        "front": front,
        "pick": None
        if card is None
        else {
            "trial": card["trial"],
            "plan": card["plan_summary"],
            "why": card["why"],
            "registry_version": card.get("registry", {}).get("version"),
            "uri": card.get("registry", {}).get("uri"),
            "onnx": str(exp.out / "deployable.onnx"),
        },
        "handover_pending": None if left is None else {"trial": left.trial, "version": left.version},
        "storage": mask_secrets(exp.storage_url),
        "tracking_uri": mask_secrets(exp.tracking_uri),
    }


def as_text(state: dict[str, Any]) -> str:
    """The status for a terminal."""
    rungs = {int(k): v for k, v in state["compute"]["stopped_at_rung"].items()}
    lines = [
        f"{state['experiment']}: {state['done']} plans tried ({state['complete']} complete, "
        f"{state['failed']} failed), {state['running']} running, {state['queued']} queued; "
        f"{state['on_the_way']} models made on the trials' way and {state['dominated']} plans stopped before "
        f"training (neither costs a trial)",
        f"compute: {describe_spending(Spending(**{**state['compute'], 'stopped_at_rung': rungs}))}",
        f"front: {len(state['front'])} members (trials {', '.join(map(str, state['front'])) or '-'})",
    ]
    pick = state["pick"]
    if pick is None:
        lines.append("pick: none yet (`slimsweep run` picks at the end; `slimsweep pick` re-runs the choice)")
    else:
        lines.append(
            f"pick: trial {pick['trial']} ({pick['plan']}), {pick['uri']} version "
            f"{pick['registry_version']}, {pick['onnx']}"
        )
    if state["handover_pending"]:
        lines.append(
            f"hand-over of trial {state['handover_pending']['trial']} was interrupted: `slimsweep pick` completes it"
        )
    if not state["finished_budget"]:
        lines.append("the budget is not finished: run the same `slimsweep run` command to resume")
    return "\n".join(lines)
