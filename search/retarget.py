"""Train once, deploy anywhere: re-time a finished sweep's trained models on another target, optionally score their
accuracy on that device, and build that target's front and pick. Nothing is trained and no trial is added to the
study.

Two steps, as the sweep itself times: each trained model is timed once on the target (its percentiles and throughput,
which build the target's front); then only the front members the pick can reach are timed side by side with the
teacher there (search/deliver.time_with_teacher, the sweep's own verification), for the speed-ups the pick decides by.
What a target measured is kept on the study (user attribute `slimsweep.retarget:<target>`), so a second run resumes:
models already timed there are not timed again, nor the same members side by side.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna

from evaluators.compare import APART_DRIFT, INTERVAL_COVERS
from evaluators.errors import ConfigError, SlimsweepError
from evaluators.secrets import mask_secrets, masked
from evaluators.targets import TARGETS, make_target, target_class
from search.artifacts import trial_onnx_path
from search.config import METRIC_DIRECTIONS, Experiment, Target
from search.deliver import (
    Retime,
    input_example,
    io_description,
    model_description,
    version_description,
    version_tags,
)
from search.handover import hand_over, recover
from search.pareto import Candidate, everything
from search.pick import Choice, PickPolicy, choose, make_policy
from search.retarget_timing import (
    SIDE,
    TEACHER,
    rounds_and_tight,
    say_not_runnable,
    score_on_device,
    side_by_side,
    time_each,
)
from search.station import compare_on
from search.study import baseline
from search.study import teacher as sweep_teacher
from search.tracking import NOTE, Tracker

KEY = "slimsweep.retarget:"  # + target slug -> what that target measured (the only study attribute this module owns)


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
    """What a target measured: {'target', 'accuracy_on', 'teacher', 'models', 'side_by_side', 'device_accuracy'}
    (empty if none)."""
    return dict(study.user_attrs.get(KEY + slug, {}))


def _keep(study: optuna.Study, slug: str, record: dict[str, Any]) -> None:
    study.set_user_attr(KEY + slug, record)


@dataclass(frozen=True)
class TargetFront:
    """A target's view of the sweep: every trained model re-timed there, its front (the members timed side by side
    with the teacher carry their speed-up), and the teacher's figures."""

    slug: str
    teacher: dict[str, float]
    models: list[Candidate]
    front: list[Candidate]
    host_accuracy: dict[int, float]  # the sweep's accuracy per trial (where the device's is shown beside it)
    accuracy_on: str  # 'host' or 'device'
    runtime: dict[str, Any] = field(default_factory=dict)  # the target's describe(): providers, runtime version
    not_runnable: dict[str, str] = field(default_factory=dict)  # trial -> why the target could not run it
    side_rounds: int | None = None  # the side-by-side timing's rounds
    side_tight: bool | None = None  # whether its intervals narrowed before its time cap

    @property
    def teacher_ms(self) -> float:
        """The teacher's p50 the pick compares with: side by side with the members when they were, else alone."""
        verified = self.teacher.get("latency_p50_ms_verified")
        return self.teacher["latency_p50_ms"] if verified is None else verified


@dataclass(frozen=True)
class Retargeted:
    """What `retarget` produced."""

    view: TargetFront
    choice: Choice
    onnx_path: Path
    card_path: Path
    version: str
    timed: int  # models timed one by one now (the rest came from the stored record)
    side_by_side: list[int]  # the front members timed side by side with the teacher for the pick


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
    retime: Retime | None = None,
    say: Callable[[str], None] = lambda line: None,
) -> Retargeted:
    """Time every trained model of the finished sweep on `target` once, score them there when target.accuracy is
    'device', build the target's front, time the members the pick can reach side by side with the teacher there
    (with `retime`, default the target's own side-by-side timing), pick by the experiment's policy and hand the pick
    over as outputs/<name>/<target>/ and the alias 'deployable-<target>'. Trains nothing; adds no trial."""
    if baseline(study) is None:
        raise SlimsweepError(f"the study {exp.name!r} has no finished sweep to retarget; run `slimsweep run` first")
    slug, spec = target_slug(target), target.spec()
    device = make_target(spec)
    device.check()
    runtime = device.describe()
    models = trained(study)
    if not models:
        raise SlimsweepError(f"the sweep {exp.name!r} has no trained model to retarget (no successful trial)")
    record = stored(study, slug)
    if record.get("runtime", masked(runtime)) != masked(runtime):
        # Another runtime, provider option or CPU under the same name: what was timed before no longer holds.
        say(f"{slug} was timed with {_runtime_text(record['runtime'])}; now {_runtime_text(runtime)}: timing it again")
        record = {}
    record.setdefault("models", {})
    record["target"] = masked(target.model_dump())
    record["accuracy_on"] = target.accuracy
    record["runtime"] = masked(runtime)  # what times there (providers and their options, runtime version)
    paths = {c.trial: trial_onnx_path(exp, tracker, c.trial) for c in models}
    todo = [c.trial for c in models if str(c.trial) not in record["models"]]
    if todo or TEACHER not in record:
        again = [n for n in todo if str(n) in record.get("not_runnable", {})]
        if len(again) < len(todo) or TEACHER not in record:
            teacher = " and the teacher" if TEACHER not in record else ""
            fresh = len(todo) - len(again)
            say(f"timing {fresh} trained models{teacher} on {slug}, one at a time (nothing is trained)")
        if again:
            say(f"trying again on {slug} the {len(again)} trained models it could not run before")
        time_each(exp, spec, paths, todo, record, keep=lambda: _keep(study, slug, record))
        _keep(study, slug, record)
        say_not_runnable(record, slug, {str(c.trial): dict(c.params_dict) for c in models}, say)
    else:
        say(f"all {len(models)} trained models were timed on {slug} before: nothing to time one by one")
    if target.accuracy == "device":
        score_on_device(exp, spec, paths, models, record, say)
        _keep(study, slug, record)
    policy = make_policy(exp.pick)
    reach = within_reach(target_front(exp, study, slug).front, policy)
    names = [str(c.trial) for c in reach]
    side_by_side(
        exp,
        spec,
        names,
        paths,
        record,
        slug,
        retime or (lambda m, n, settings: compare_on(device, m, n, settings)),
        compare_seconds,
        keep=lambda: _keep(study, slug, record),
        say=say,
    )
    view = target_front(exp, study, slug)
    choice = choose(view.front, policy, view.teacher_ms)
    onnx_path, card_path, version = _hand_over(exp, study, tracker, target, view, choice, paths, say)
    timed = len(todo) - len(record.get("not_runnable", {})) if todo else 0
    return Retargeted(view, choice, onnx_path, card_path, version, timed, [int(n) for n in names])


def _runtime_text(runtime: dict[str, Any]) -> str:
    """'CPUExecutionProvider, onnxruntime 1.32.0 (AMD EPYC)': what timed a target, in a few words."""
    providers = ", ".join(map(str, runtime.get("providers") or [])) or runtime.get("kind", "?")
    where = runtime.get("cpu") or (runtime.get("device") or {}).get("hostname")
    return f"{providers}, onnxruntime {runtime.get('onnxruntime')}" + (f" ({where})" if where else "")


def within_reach(front: list[Candidate], policy: PickPolicy) -> list[Candidate]:
    """The front members the pick can choose: those within the policy's accuracy drop, when it states one and any
    member is (the pick decides among them by speed); else the whole front."""
    drop = getattr(policy, "max_accuracy_drop", None)
    reach = [c for c in front if drop is None or c.accuracy_drop <= drop]
    return reach or front


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
    side = record.get(SIDE, {"p50_ms": {}, "models": {}})
    teacher["latency_p50_ms_verified"] = side["p50_ms"].get(TEACHER)
    models, host = [], {}
    for c in everything(study):
        m = record["models"].get(str(c.trial))
        if m is None:
            continue
        host[c.trial] = c.accuracy
        acc = device.get(str(c.trial), c.accuracy)
        s = side["models"].get(str(c.trial), {})  # none for a member the pick cannot reach (not timed side by side)
        models.append(
            replace(
                c,
                accuracy=acc,
                accuracy_drop=teacher["accuracy"] - acc,
                latency_p50_ms=m["latency_p50_ms"],
                latency_p95_ms=m["latency_p95_ms"],
                latency_p50_ms_verified=side["p50_ms"].get(str(c.trial)),
                throughput_per_s=m["throughput_per_s"],
                speedup=s.get("speedup"),
                speedup_ci_low=s.get("ci_low"),
                speedup_ci_high=s.get("ci_high"),
            )
        )
    front = _non_dominated([c for c in models if _feasible(exp, c)], exp.objectives, record)
    return TargetFront(
        slug,
        teacher,
        sorted(models, key=lambda c: c.latency),
        front,
        host,
        record.get("accuracy_on", "host"),
        record.get("runtime", {}),
        record.get("not_runnable", {}),
        *rounds_and_tight(side["models"]),
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


LATENCY_METHOD = (
    f"latency_p50_ms and latency_p95_ms: each model timed alone, as a trial and `slimsweep bench` time it (a median "
    f"timed in another process, or minutes apart, lands within about ±{APART_DRIFT:.0%}); latency_p50_ms_verified "
    "and the speed-up: side by side with the teacher and the other front members the pick can reach, as `slimsweep "
    "compare` times them"
)


def _provider_note(runtime: dict[str, Any]) -> str | None:
    """What the card says about the provider that ran: every timing's session had the target's own first."""
    kind = runtime.get("kind")
    provider = getattr(target_class(kind), "provider", None) if kind in TARGETS else None
    if provider is None:  # timed elsewhere (a device agent) or by an extension's own method
        return None
    return (
        f"every timing's ONNX Runtime session here had {provider} first; a session that fell back to another "
        "provider is refused, never timed"
    )


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
        "speedup_clear_of_one": None if c.speedup_ci_low is None else c.speedup_ci_low > 1.0 or c.speedup_ci_high < 1.0,
        "speedup_interval_covers": None if c.speedup_ci_low is None else INTERVAL_COVERS,
        "side_by_side": {"rounds": view.side_rounds, "intervals_narrowed": view.side_tight},
        "latency_method": LATENCY_METHOD,
        "target": masked(target.model_dump()),
        "timed_with": view.runtime,
        "provider_checked": _provider_note(view.runtime),
        "not_runnable": view.not_runnable,
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
