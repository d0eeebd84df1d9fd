"""Train once, deploy anywhere: re-time a finished sweep's trained models on another target (side by side with the
teacher there), optionally score their accuracy on that device, and build that target's front and pick. Nothing is
trained and no trial is added to the study.

What a target measured is kept on the study (user attribute `slimsweep.retarget:<target>`), so a second run resumes:
models already timed there are not timed again.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna

from evaluators.compare import INTERVAL_COVERS, CompareSettings, Comparison, compare, interleave
from evaluators.errors import ConfigError, SlimsweepError
from evaluators.latency import TRIAL_TIMING, TimingSettings
from evaluators.limits import Limits, run_limited
from evaluators.secrets import mask_secrets, masked
from evaluators.targets import TargetSpec, make_target, settings_for, target_class
from search.artifacts import trial_onnx_path
from search.config import METRIC_DIRECTIONS, Experiment, Target
from search.deliver import (
    VERIFY_COMPARE,
    input_example,
    io_description,
    model_description,
    version_description,
    version_tags,
)
from search.handover import hand_over, recover
from search.pareto import Candidate, everything
from search.pick import Choice, choose, make_policy
from search.station import LOAD_SECONDS, limited_measure
from search.study import baseline
from search.study import teacher as sweep_teacher
from search.tracking import NOTE, Tracker

KEY = "slimsweep.retarget:"  # + target slug -> what that target measured (the only study attribute this module owns)
TEACHER = "teacher"


def target_slug(target: Target) -> str:
    """A target's name in folders and aliases: kind, device and agent, threads and batch (e.g. cpu-t2-b64)."""
    parts = [target.kind]
    if target.url:
        where = urllib.parse.urlsplit(target.url)
        parts.append(f"{where.hostname}-{where.port}" if where.port else str(where.hostname))
    elif target_class(target.kind).uses_gpu:
        parts.append(f"gpu{target.device_id}")
    parts += [f"t{target.threads}", f"b{target.batch_size}"]
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:60]


def alias(slug: str) -> str:
    """The registry alias of a target's pick; the sweep's own stays 'deployable'."""
    return f"deployable-{slug}"


def known(study: optuna.Study) -> list[str]:
    """The targets this sweep was retargeted to."""
    return sorted(k.removeprefix(KEY) for k in study.user_attrs if k.startswith(KEY))


def stored(study: optuna.Study, slug: str) -> dict[str, Any]:
    """What a target measured: {'target', 'accuracy_on', 'teacher', 'models', 'device_accuracy'} (empty if none)."""
    return dict(study.user_attrs.get(KEY + slug, {}))


def _keep(study: optuna.Study, slug: str, record: dict[str, Any]) -> None:
    study.set_user_attr(KEY + slug, record)


@dataclass(frozen=True)
class TargetFront:
    """A target's view of the sweep: every trained model re-timed there, its front, and the teacher's figures."""

    slug: str
    teacher: dict[str, float]
    models: list[Candidate]
    front: list[Candidate]
    host_accuracy: dict[int, float]  # the sweep's accuracy per trial (where the device's is shown beside it)
    accuracy_on: str  # 'host' or 'device'


@dataclass(frozen=True)
class Retargeted:
    """What `retarget` produced."""

    view: TargetFront
    choice: Choice
    onnx_path: Path
    card_path: Path
    version: str
    timed: int  # models timed now (the rest came from the stored record)


def trained(study: optuna.Study) -> list[Candidate]:
    """The sweep's trained models, each once (a plan answered from another trial is that trial's model)."""
    return everything(study)


def retarget(
    exp: Experiment,
    study: optuna.Study,
    target: Target,
    tracker: Tracker,
    *,
    compare_seconds: float | None = None,
    say: Callable[[str], None] = lambda line: None,
) -> Retargeted:
    """Re-time every trained model of the finished sweep on `target` (side by side with the teacher), score them
    there when target.accuracy is 'device', pick by the experiment's policy and hand the pick over as
    outputs/<name>/<target>/ and the alias 'deployable-<target>'. Trains nothing; adds no trial."""
    if baseline(study) is None:
        raise SlimsweepError(f"the study {exp.name!r} has no finished sweep to retarget; run `slimsweep run` first")
    slug, spec = target_slug(target), target.spec()
    make_target(spec).check()
    models = trained(study)
    if not models:
        raise SlimsweepError(f"the sweep {exp.name!r} has no trained model to retarget (no successful trial)")
    record = stored(study, slug)
    record.setdefault("models", {})
    record["target"] = masked(target.model_dump())
    record["accuracy_on"] = target.accuracy
    paths = {c.trial: trial_onnx_path(exp, tracker, c.trial) for c in models}
    todo = [c.trial for c in models if str(c.trial) not in record["models"]]
    if todo or TEACHER not in record:
        say(f"timing {len(todo)} trained models and the teacher on {slug}, side by side (nothing is trained)")
        seconds = exp.pick.verify_seconds if compare_seconds is None else compare_seconds
        _time(exp, spec, paths, todo, record, seconds)
        _keep(study, slug, record)
    else:
        say(f"all {len(models)} trained models were timed on {slug} before: nothing to time")
    if target.accuracy == "device":
        _score_on_device(exp, spec, paths, models, record, say)
        _keep(study, slug, record)
    view = target_front(exp, study, slug)
    choice = choose(view.front, make_policy(exp.pick), view.teacher["latency_p50_ms"])
    onnx_path, card_path, version = _hand_over(exp, study, tracker, target, view, choice, paths, say)
    return Retargeted(view, choice, onnx_path, card_path, version, len(todo))


def _time(
    exp: Experiment,
    spec: TargetSpec,
    paths: dict[int, Path],
    todo: list[int],
    record: dict[str, Any],
    seconds: float,
) -> None:
    """Time the teacher and the models in `todo` one by one (percentiles, throughput), then side by side (speed-ups
    over the teacher), into record."""
    settings = settings_for(spec, **TRIAL_TIMING)
    teacher = (exp.out / "teacher.onnx").read_bytes()
    models = {TEACHER: teacher, **{str(n): paths[n].read_bytes() for n in todo}}
    figures = {name: limited_measure(spec, model, settings) for name, model in models.items()}
    together = CompareSettings(threads=spec.threads, batch_size=spec.batch_size, max_seconds=seconds, **VERIFY_COMPARE)
    result = side_by_side(spec, list(models.values()), list(models), together)
    for name, stats in figures.items():
        timing = result.get(name)
        entry = {
            **stats.metrics(),
            "latency_stable": float(stats.stable),
            "latency_p50_ms_side_by_side": timing.p50_ms,
        }
        if name != TEACHER:
            entry.update(speedup=timing.speedup, ci_low=timing.speedup_ci_low, ci_high=timing.speedup_ci_high)
            record["models"][name] = entry
        else:
            record[TEACHER] = entry


def side_by_side(spec: TargetSpec, models: list[bytes], names: list[str], settings: CompareSettings) -> Comparison:
    """Time models interleaved on the target (as BenchStation.compare does, without a Ray actor); speed-ups over
    models[0]."""
    target = make_target(spec)
    if not target_class(spec.kind).takes_url:  # timed here, in the capped worker; an agent has its own limits
        seconds = LOAD_SECONDS * len(models) + 2 * settings.max_seconds + 1.0
        limits = Limits(seconds=seconds, capped=not target_class(spec.kind).uses_gpu)
        what = f"timing {len(models)} models side by side on {spec.kind}"
        return run_limited(_compare_here, models, names, settings, spec, limits=limits, what=what)
    burst = TimingSettings(
        threads=settings.threads,
        batch_size=settings.batch_size,
        warmup=settings.burst_warmup,
        min_repeats=settings.burst_min_runs,
        max_seconds=settings.burst_seconds,
    )

    def turn(model: bytes):
        def run() -> tuple[float, int]:
            stats = target.measure(model, burst)
            return stats.p50_ms, stats.repeats

        return run

    return interleave([turn(m) for m in models], names, settings)


def _compare_here(models: list[bytes], names: list[str], settings: CompareSettings, spec: TargetSpec) -> Comparison:
    target = make_target(spec)
    return compare(models, settings, names=names, providers=target.providers(), require_provider=target.provider)


def _score_on_device(
    exp: Experiment,
    spec: TargetSpec,
    paths: dict[int, Path],
    models: list[Candidate],
    record: dict[str, Any],
    say: Callable[[str], None],
) -> None:
    """Each model's accuracy from the outputs the device's runtime gives for the validation inputs (the labels stay
    here); kept in record['device_accuracy']."""
    from evaluators.remote import AgentClient
    from experiments.tasks import load_task

    scored = record.setdefault("device_accuracy", {})
    todo = [str(c.trial) for c in models if str(c.trial) not in scored]
    if TEACHER not in scored:
        todo.insert(0, TEACHER)
    if not todo:
        return
    data = load_task(exp.task).data
    client = AgentClient(spec.url, spec.token)
    say(f"scoring {len(todo)} models on the device ({len(data.x_val)} validation inputs each; labels stay here)")
    for name in todo:
        model = (exp.out / "teacher.onnx" if name == TEACHER else paths[int(name)]).read_bytes()
        logits = client.outputs(model, data.x_val, threads=spec.threads, rows=_rows(data.num_classes))
        if len(logits) != len(data.y_val):
            raise SlimsweepError(f"the device returned {len(logits)} outputs for {len(data.y_val)} inputs")
        scored[name] = float(100.0 * np.mean(logits.argmax(axis=1) == np.asarray(data.y_val)))


def _rows(classes: int) -> int:
    """Rows per outputs request: as many as keep one answer well under the agent's reply limit."""
    return int(max(1, min(256, 500_000 // (4 * max(classes, 1)))))


def target_front(exp: Experiment, study: optuna.Study, slug: str) -> TargetFront:
    """A target's view from what it measured: accuracy from the device where scored there (else the sweep's),
    latency, throughput and speed-ups from the target; its front by the experiment's objectives and constraints."""
    record = stored(study, slug)
    if not record:
        shown = ", ".join(known(study)) or "none yet"
        raise ConfigError(
            f"--target {slug!r}: this sweep was not retargeted there (retargeted: {shown}); run "
            f"`slimsweep retarget` with that target first"
        )
    device = record.get("device_accuracy", {}) if record.get("accuracy_on") == "device" else {}
    host_teacher = sweep_teacher(study)
    teacher = {**host_teacher, **record[TEACHER], "accuracy": device.get(TEACHER, host_teacher["accuracy"])}
    teacher["latency_p50_ms_verified"] = record[TEACHER]["latency_p50_ms_side_by_side"]
    models, host = [], {}
    for c in everything(study):
        m = record["models"].get(str(c.trial))
        if m is None:
            continue
        host[c.trial] = c.accuracy
        acc = device.get(str(c.trial), c.accuracy)
        models.append(
            replace(
                c,
                accuracy=acc,
                accuracy_drop=teacher["accuracy"] - acc,
                latency_p50_ms=m["latency_p50_ms"],
                latency_p95_ms=m["latency_p95_ms"],
                latency_p50_ms_verified=m["latency_p50_ms_side_by_side"],
                throughput_per_s=m["throughput_per_s"],
                speedup=m["speedup"],
                speedup_ci_low=m["ci_low"],
                speedup_ci_high=m["ci_high"],
            )
        )
    front = _non_dominated([c for c in models if _feasible(exp, c)], exp.objectives, record)
    return TargetFront(
        slug, teacher, sorted(models, key=lambda c: c.latency), front, host, record.get("accuracy_on", "host")
    )


def _feasible(exp: Experiment, c: Candidate) -> bool:
    """Within the experiment's constraints on this target."""
    k = exp.constraints
    return (
        c.accuracy_drop <= k.max_accuracy_drop
        and (k.max_latency_ms is None or c.latency_p50_ms <= k.max_latency_ms)
        and (k.max_size_mb is None or c.size_mb <= k.max_size_mb)
    )


def _value(c: Candidate, name: str, record: dict[str, Any]) -> float:
    """An objective's value, oriented so that larger is better."""
    value = getattr(c, name, None)
    if value is None:
        value = record["models"][str(c.trial)][name]
    return value if METRIC_DIRECTIONS[name] == "maximize" else -value


def _non_dominated(members: list[Candidate], objectives: list[str], record: dict[str, Any]) -> list[Candidate]:
    """The members no other member dominates on the objectives, fastest first."""
    points = {c.trial: np.array([_value(c, o, record) for o in objectives]) for c in members}
    front = [
        c
        for c in members
        if not any(
            np.all(points[o.trial] >= points[c.trial]) and np.any(points[o.trial] > points[c.trial]) for o in members
        )
    ]
    return sorted(front, key=lambda c: c.latency)


def card(exp: Experiment, target: Target, view: TargetFront, choice: Choice, policy: Any) -> dict[str, Any]:
    """The model card of a target's pick: the same fields as the sweep's card, with the target's figures, both
    accuracies where they differ, and that nothing was trained."""
    c = choice.candidate
    slug = view.slug
    return {
        "experiment": exp.name,
        "task": exp.task.name,
        "target_name": slug,
        "retargeted": f"re-timed on {slug} from the sweep's trained models; nothing was trained for this target",
        "trial": c.trial,
        "plan": dict(c.params_dict),
        "plan_summary": c.plan,
        "measured": {k: v for k, v in asdict(c).items() if k not in {"params_dict", "plan", "trial"}},
        "accuracy_scored_on": view.accuracy_on,
        "accuracy_host": view.host_accuracy.get(c.trial),
        "accuracy_device": c.accuracy if view.accuracy_on == "device" else None,
        "teacher": view.teacher,
        "speedup_vs_teacher": c.speedup,
        "speedup_ci_low": c.speedup_ci_low,
        "speedup_ci_high": c.speedup_ci_high,
        "speedup_clear_of_one": c.speedup_ci_low > 1.0 or c.speedup_ci_high < 1.0,
        "speedup_interval_covers": INTERVAL_COVERS,
        "target": masked(target.model_dump()),
        "policy": policy.describe(),
        "policy_name": policy.name,
        "met_policy": choice.met_policy,
        "why": choice.why,
        "won_by": choice.won_by,
        "tied_with": [
            {"trial": t.trial, "plan": t.plan, "accuracy": t.accuracy} for t in view.front if t.trial in choice.tied
        ],
        "registry": {
            "name": exp.name,
            "alias": alias(slug),
            "uri": f"models:/{exp.name}@{alias(slug)}",
            "tracking_uri": mask_secrets(exp.tracking_uri),
        },
    }


def _hand_over(
    exp: Experiment,
    study: optuna.Study,
    tracker: Tracker,
    target: Target,
    view: TargetFront,
    choice: Choice,
    paths: dict[int, Path],
    say: Callable[[str], None],
) -> tuple[Path, Path, str]:
    """Register the target's pick (alias deployable-<target>), write outputs/<name>/<target>/, log the target's run."""
    slug, name = view.slug, alias(view.slug)
    folder = exp.out / slug
    note = recover(folder, lambda: tracker.alias_version(name))
    if note:
        say(note)
    policy = make_policy(exp.pick)
    doc = card(exp, target, view, choice, policy)
    doc["io"] = io_description(exp, list(baseline(study).input_shape))
    c = choice.candidate
    runs = tracker.trial_runs() if not tracker.down else {}
    tracker.start_retarget(slug, {"target": slug, **{f"target.{k}": v for k, v in doc["target"].items()}})

    def register(sha: str) -> str:
        if tracker.down or c.trial not in runs:
            return ""
        found = tracker.version_for(c.trial, sha)
        if found is not None:  # the same model bytes: one version, which this target's alias names too
            tracker.client.set_model_version_tag(tracker.name, found, f"slimsweep.picked_for.{slug}", "true")
            return found
        say(f"registering trial {c.trial} as {exp.name} (alias {name})")
        tags = {**version_tags(doc, sha), f"slimsweep.picked_for.{slug}": "true"}
        return tracker.register(
            runs[c.trial],
            paths[c.trial],
            input_example=input_example(exp),
            tags=tags,
            description=version_description(doc),
            model_description=model_description(doc),
            metadata={"slimsweep": {"plan": doc["plan"], "why": doc["why"], "target": slug}},
        )

    version = hand_over(
        folder,
        c.trial,
        paths[c.trial].read_bytes(),
        doc,
        register,
        lambda v: tracker.move_alias(v, name),
        alias_version=lambda: tracker.alias_version(name),
    )
    csv_path = folder / "front.csv"
    from search.retarget_report import write_csv  # imported here: it imports this module

    write_csv(view, csv_path, pick=c.trial)
    tracker.log_parent(
        files={"": csv_path, "model_card": folder / "model_card.json"},
        metrics={
            "pick_trial": c.trial,
            **{k: v for k, v in (("speedup_vs_teacher", c.speedup),) if v is not None},
        },
        tags={
            "slimsweep.front": ",".join(str(m.trial) for m in view.front),
            "slimsweep.pick": str(c.trial),
            NOTE: f"Retargeted to {slug}: picked trial {c.trial} ({c.plan}), registered as "
            f"models:/{exp.name}@{name} version {version or '(not registered)'}. Why: {choice.why}",
        },
    )
    tracker.end("FINISHED")
    return folder / "deployable.onnx", folder / "model_card.json", version
