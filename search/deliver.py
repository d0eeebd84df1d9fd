"""After the sweep: re-time the front in isolation, publish it, pick by policy, register and write the model."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import optuna

from evaluators.compare import CompareSettings, Comparison
from search.config import Experiment
from search.pareto import Candidate, everything, front, write_charts, write_csv
from search.pick import Choice, PickPolicy, choose
from search.study import baseline as study_baseline
from search.study import read, set_verified, teacher, verified, verified_speedups
from search.sweep import trial_path
from search.tracking import Tracker

# Verification: a longer warm-up and time cap than a trial's timing, since the pick and its speed-up rest on it.
VERIFY_COMPARE = dict(warmup=50, min_rounds=30, max_seconds=20.0, target_rel_ci=0.03)


@dataclass(frozen=True)
class Delivery:
    """What the pick produced."""

    choice: Choice
    onnx_path: Path
    card_path: Path
    registered_version: str
    front: list[Candidate]


# Times models side by side at the target's station (models[0] the baseline), e.g. BenchStation.compare.
Retime = Callable[[list[bytes], list[str], CompareSettings], Comparison]


def verify(exp: Experiment, study: optuna.Study, members: list[Candidate], retime: Retime) -> tuple[list[Candidate], float]:
    """Time the fp32 teacher and the front members side by side, nothing else running; store each one's p50 and
    its speed-up over the teacher (median of per-round ratios, with its 95% CI)."""
    settings = CompareSettings(threads=exp.target.threads, batch_size=exp.target.batch_size, **VERIFY_COMPARE)
    names = ["teacher", *(str(c.trial) for c in members)]
    models = [(exp.out / "teacher.onnx").read_bytes(), *(trial_path(exp, c.trial).read_bytes() for c in members)]
    result = retime(models, names, settings)
    figures, speedups = verified(study), verified_speedups(study)
    for m in result.models:
        figures[m.name] = m.p50_ms
        if m.name != "teacher":
            speedups[m.name] = {"speedup": m.speedup, "ci_low": m.speedup_ci_low, "ci_high": m.speedup_ci_high,
                                "clear_of_one": m.clear_of_one, "rounds": result.rounds, "tight": result.tight}
    set_verified(study, figures, speedups)
    return with_verified(study, members), figures["teacher"]


def verified_speedup(study: optuna.Study, trial: int) -> dict[str, Any] | None:
    """A member's side-by-side speed-up over the teacher from the last verification, if it was verified."""
    return verified_speedups(study).get(str(trial))


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
        speedup = verified_speedup(study, c.trial)
        if speedup is not None and c.trial in runs:
            for key, metric in _SPEEDUP_METRICS.items():
                tracker.client.log_metric(runs[c.trial], metric, speedup[key])
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
    speedup = {k: card[k] for k in _SPEEDUP_METRICS.values() if card[k] is not None}
    tracker.log_parent(files={"": card_path}, tags={"slimsweep.pick": str(choice.candidate.trial)},
                       metrics={"pick_trial": choice.candidate.trial, **speedup})
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
        **_speedup_fields(study, c, teacher_ms),
        "size_ratio_vs_teacher": figures["size_mb"] / c.size_mb,
        "target": exp.target.model_dump(),
        "policy": policy.describe(),
        "policy_name": policy.name,
        "met_policy": choice.met_policy,
        "why": choice.why,
        "input": {"name": "input", "shape": ["batch", *baseline.input_shape], "dtype": "float32"},
    }


# Stored speed-up keys -> the metric and model-card names they go by.
_SPEEDUP_METRICS = {"speedup": "speedup_vs_teacher", "ci_low": "speedup_ci_low", "ci_high": "speedup_ci_high"}


def _speedup_fields(study: optuna.Study, c: Candidate, teacher_ms: float) -> dict[str, Any]:
    """The pick's speed-up over the teacher for the model card: side by side when verified, else said to be not."""
    s = verified_speedup(study, c.trial)
    if s is None:
        return {"speedup_vs_teacher": teacher_ms / c.latency, "speedup_ci_low": None, "speedup_ci_high": None,
                "speedup_clear_of_one": None,
                "speedup_method": "ratio of two medians taken apart (not verified side by side: no interval)"}
    return {"speedup_vs_teacher": s["speedup"], "speedup_ci_low": s["ci_low"], "speedup_ci_high": s["ci_high"],
            "speedup_clear_of_one": s["clear_of_one"],
            "speedup_method": f"side by side: median of {s['rounds']} per-round ratios teacher p50 / model p50, "
                              "with the 95% interval of that median"}
