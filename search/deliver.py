"""After the sweep: re-time the front in isolation, publish it, pick by policy, register and write the model."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import optuna

from evaluators.latency import TimingSettings
from search.config import Experiment
from search.pareto import Candidate, everything, front, write_charts, write_csv
from search.pick import Choice, PickPolicy, choose
from search.study import baseline as study_baseline
from search.study import read, teacher, verified
from search.sweep import timing, trial_path
from search.tracking import Tracker

# Verification repeats: more than a trial's, since the pick rests on these figures.
VERIFY_TIMING = dict(warmup=50, min_repeats=300, max_seconds=3.0, target_rel_ci=0.01)


@dataclass(frozen=True)
class Delivery:
    """What the pick produced."""

    choice: Choice
    onnx_path: Path
    card_path: Path
    registered_version: str
    front: list[Candidate]


# Times one model at the target's station with the given settings, bypassing the latency cache.
Retime = Callable[[bytes, TimingSettings], float]


def verify(exp: Experiment, study: optuna.Study, members: list[Candidate], retime: Retime) -> tuple[list[Candidate], float]:
    """Re-time front members and the fp32 teacher one after another, nothing else running; store the figures."""
    settings = timing(exp, **VERIFY_TIMING)
    verified: dict[str, float] = dict(study.user_attrs.get("verified", {}))
    for c in members:
        verified[str(c.trial)] = retime(trial_path(exp, c.trial).read_bytes(), settings)
    verified["teacher"] = retime((exp.out / "teacher.onnx").read_bytes(), settings)
    study.set_user_attr("verified", verified)
    return with_verified(study, members), verified["teacher"]


def with_verified(study: optuna.Study, members: list[Candidate]) -> list[Candidate]:
    """Candidates carrying the stored verified latency, fastest first."""
    figures = verified(study)
    if not all(str(c.trial) in figures for c in members):
        # Isolated and in-sweep timings are not comparable: rank all members on the in-sweep figures instead.
        return sorted(members, key=lambda c: c.latency)
    out = [replace(c, latency_p50_ms_verified=figures[str(c.trial)]) for c in members]
    return sorted(out, key=lambda c: c.latency)


def teacher_latency(study: optuna.Study) -> float:
    """The teacher's verified p50 if measured, else the one taken at the start of the sweep."""
    figures = verified(study)
    return figures["teacher"] if "teacher" in figures else teacher(study)["latency_p50_ms"]


def publish_front(exp: Experiment, study: optuna.Study, tracker: Tracker, members: list[Candidate]) -> None:
    """Tag front runs, log verified latencies, and attach pareto.csv / .png / .html to the parent run."""
    numbers = {c.trial for c in members}
    tracker.mark_front(numbers)
    runs = tracker.trial_runs()
    for c in members:
        if c.latency_p50_ms_verified is not None and c.trial in runs:
            tracker.client.log_metric(runs[c.trial], "latency_p50_ms_verified", c.latency_p50_ms_verified)
    others = [c for c in everything(study) if c.trial not in numbers]
    baseline = dict(teacher(study), latency_p50_ms_verified=teacher_latency(study))
    csv_path = write_csv(members, exp.out / "pareto.csv")
    png, page = write_charts(members, others, baseline, exp.out)
    tracker.log_parent(files={"": csv_path}, tags={"slimsweep.front": ",".join(map(str, sorted(numbers)))})
    tracker.log_parent(files={"": png})
    tracker.log_parent(files={"": page})


def deliver(exp: Experiment, study: optuna.Study, tracker: Tracker, policy: PickPolicy, *, retime: Retime | None,
            output_dir: Path | None = None) -> Delivery:
    """Choose by policy (re-timing the front first when `retime` is given), then register the model (alias
    'deployable') and write deployable.onnx + model_card.json."""
    members = front(study)
    teacher_ms = teacher_latency(study)
    if retime is not None and members:
        members, teacher_ms = verify(exp, study, members, retime)
    else:
        members = with_verified(study, members)
    publish_front(exp, study, tracker, members)
    choice = choose(members, policy, teacher_ms)
    folder = output_dir or exp.out
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = folder / "deployable.onnx"
    shutil.copyfile(trial_path(exp, choice.candidate.trial), onnx_path)
    card = model_card(exp, study, choice, policy, teacher_ms)
    version = tracker.register(onnx_path, card)
    card["registry"] = {"name": exp.name, "version": version, "alias": "deployable",
                        "uri": f"models:/{exp.name}@deployable", "tracking_uri": exp.tracking_uri}
    card_path = folder / "model_card.json"
    card_path.write_text(json.dumps(card, indent=2))
    tracker.log_parent(files={"": card_path}, tags={"slimsweep.pick": str(choice.candidate.trial)},
                       metrics={"pick_trial": choice.candidate.trial})
    return Delivery(choice, onnx_path, card_path, version, members)


def model_card(exp: Experiment, study: optuna.Study, choice: Choice, policy: PickPolicy,
               teacher_ms: float) -> dict[str, Any]:
    """What was done to the model, its measured figures, the teacher's, and why it was chosen."""
    c = choice.candidate
    rec = read(study.get_trials(deepcopy=False)[c.trial])
    baseline = study_baseline(study)
    figures = dict(baseline.teacher, latency_p50_ms_verified=teacher_ms)
    return {
        "experiment": exp.name,
        "task": exp.task.name,
        "trial": c.trial,
        "plan": dict(c.params_dict),
        "plan_summary": c.plan,
        "measured": {k: v for k, v in asdict(c).items() if k not in {"params_dict", "plan", "trial"}},
        "stages_seconds": rec.stages,
        "reuse_of": rec.reuse_of,
        "teacher": figures,
        "speedup_vs_teacher": teacher_ms / c.latency,
        "size_ratio_vs_teacher": figures["size_mb"] / c.size_mb,
        "target": exp.target.model_dump(),
        "policy": policy.describe(),
        "policy_name": policy.name,
        "met_policy": choice.met_policy,
        "why": choice.why,
        "input": {"name": "input", "shape": ["batch", *baseline.input_shape], "dtype": "float32"},
    }
