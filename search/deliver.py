"""After the sweep: re-time the front in isolation, publish it, pick by policy, register and write the model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable

import optuna

from evaluators.compare import INTERVAL_COVERS, SIDE_BY_SIDE_DRIFT, CompareSettings, Comparison, widen
from evaluators.secrets import mask_secrets, masked
from search.artifacts import trial_onnx, trial_onnx_path
from search.config import Experiment
from search.handover import hand_over, recover
from search.pareto import Candidate, everything, front, write_charts, write_csv
from search.pick import Choice, PickPolicy, choose
from search.study import baseline as study_baseline
from search.study import read, set_verified, teacher, verified, verified_speedups
from search.tracking import NOTE, Tracker

# Verification: a longer warm-up than a trial's timing, since the pick and its speed-up rest on it; its time cap is
# the experiment's pick.verify_seconds.
VERIFY_COMPARE = dict(warmup=50, min_rounds=30, target_rel_ci=0.03)
# What to do when the sweep's verification stopped at its cap (retarget's own advice is a larger --seconds).
SWEEP_REMEDY = (
    "raise pick.verify_seconds and run `slimsweep run` again, on a quieter machine, to time them side by side again "
    "(a finished sweep trains nothing more)"
)


@dataclass(frozen=True)
class Delivery:
    """What the pick produced."""

    choice: Choice
    onnx_path: Path
    card_path: Path
    registered_version: str
    front: list[Candidate]
    card: dict[str, Any] = field(default_factory=dict)  # what card_path holds (no need to read it back)


# Times models side by side at the target's station (models[0] the baseline), e.g. BenchStation.compare.
Retime = Callable[[list[bytes], list[str], CompareSettings], Comparison]


def verify(
    exp: Experiment, study: optuna.Study, members: list[Candidate], retime: Retime
) -> tuple[list[Candidate], float]:
    """Time the fp32 teacher and the front members side by side at the sweep's target (time_with_teacher) and store
    each one's p50 and speed-up over the teacher with the study."""
    models = {str(c.trial): trial_onnx(exp, None, c.trial) for c in members}
    p50s, found = time_with_teacher(
        exp, models, retime, threads=exp.target.threads, batch=exp.target.batch_size, seconds=exp.pick.verify_seconds
    )
    figures, speedups = verified(study), verified_speedups(study)
    set_verified(study, {**figures, **p50s}, {**speedups, **found})
    return with_verified(study, members), p50s["teacher"]


def time_with_teacher(
    exp: Experiment, models: dict[str, bytes], retime: Retime, *, threads: int, batch: int, seconds: float
) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """Time the fp32 teacher and the models (name -> ONNX bytes) side by side, nothing else running: each one's p50
    ('teacher' among them), and each model's speed-up over the teacher (median of per-round ratios, with its 95% CI
    widened by the drift between processes, and the round-to-round CI alone)."""
    settings = CompareSettings(threads=threads, batch_size=batch, max_seconds=seconds, **VERIFY_COMPARE)
    result = retime([(exp.out / "teacher.onnx").read_bytes(), *models.values()], ["teacher", *models], settings)
    p50s, speedups = {}, {}
    for m in result.models:
        p50s[m.name] = m.p50_ms
        if m.name != "teacher":
            speedups[m.name] = {
                "speedup": m.speedup,
                "ci_low": m.speedup_ci_low,
                "ci_high": m.speedup_ci_high,
                "round_ci_low": m.round_ci_low,
                "round_ci_high": m.round_ci_high,
                "drift": result.drift,
                "clear_of_one": m.clear_of_one,
                "rounds": result.rounds,
                "tight": result.tight,
            }
    return p50s, speedups


def capped_note(rounds: int, where: str, remedy: str) -> str:
    """What a side-by-side timing that reached its time cap before its intervals narrowed means for the pick: the
    words the sweep's verification and retarget both say."""
    return (
        f"the side-by-side timing {where} reached its time cap after {rounds} rounds with intervals wider than "
        f"±{VERIFY_COMPARE['target_rel_ci']:.0%}: members whose intervals overlap count as tied, so the pick may not "
        f"be the fastest; {remedy}"
    )


def loose_rounds(speedups: Iterable[dict[str, Any] | None]) -> int | None:
    """The rounds of the side-by-side timing behind these stored speed-ups if it stopped at its cap before its
    intervals narrowed, else None (narrowed, not verified, or stored before slimsweep kept whether it did)."""
    for s in speedups:
        if s is not None and s.get("tight") is False:
            return int(s.get("rounds") or 0)
    return None


def verified_speedup(study: optuna.Study, trial: int) -> dict[str, Any] | None:
    """A member's side-by-side speed-up over the teacher from the last verification, if it was verified; its
    interval covers the drift between processes (one stored before it did is widened here)."""
    s = verified_speedups(study).get(str(trial))
    if s is None or "drift" in s:
        return s
    low, high = widen(s["ci_low"], s["ci_high"], SIDE_BY_SIDE_DRIFT)
    return {
        **s,
        "round_ci_low": s["ci_low"],
        "round_ci_high": s["ci_high"],
        "ci_low": low,
        "ci_high": high,
        "drift": SIDE_BY_SIDE_DRIFT,
        "clear_of_one": low > 1.0 or high < 1.0,
    }


def with_verified(study: optuna.Study, members: list[Candidate]) -> list[Candidate]:
    """Candidates carrying the stored verified latency and speed-up over the teacher, fastest first."""
    figures = verified(study)
    if not all(str(c.trial) in figures for c in members):
        # Isolated and in-sweep timings are not comparable: rank all members on the in-sweep figures instead.
        return sorted(members, key=lambda c: c.latency)
    out = [replace(c, latency_p50_ms_verified=figures[str(c.trial)]) for c in members]
    speedups = {c.trial: verified_speedup(study, c.trial) for c in members}
    if all(speedups.values()):  # the tie rule compares intervals: all members' or none (then in-sweep medians)
        out = [
            replace(c, speedup=s["speedup"], speedup_ci_low=s["ci_low"], speedup_ci_high=s["ci_high"])
            for c in out
            if (s := speedups[c.trial]) is not None
        ]
    return sorted(out, key=lambda c: c.latency)


def teacher_latency(study: optuna.Study) -> float:
    """The teacher's verified p50 if measured, else the one taken at the start of the sweep."""
    figures = verified(study)
    return figures["teacher"] if "teacher" in figures else teacher(study)["latency_p50_ms"]


def accuracy_threshold(study: optuna.Study, policy: PickPolicy) -> float | None:
    """The lowest accuracy the policy accepts (the teacher's minus its allowed drop), when it states one."""
    drop = getattr(policy, "max_accuracy_drop", None)
    return None if drop is None else teacher(study)["accuracy"] - drop


def publish_front(
    exp: Experiment,
    study: optuna.Study,
    tracker: Tracker,
    members: list[Candidate],
    *,
    pick: int | None = None,
    policy: PickPolicy | None = None,
    choice: Choice | None = None,
) -> None:
    """Tag front runs, log verified latencies and speed-ups, and attach pareto.csv / .png / .html to the parent run,
    the pick, the members tied with it on speed and the policy's accuracy threshold marked."""
    numbers = {c.trial for c in members}
    tracker.mark_front(numbers)
    every, apart = knobs(study)
    tracker.even_params(every)
    tracker.save_view(list(exp.objectives), apart)
    runs = tracker.trial_runs()
    for c in members:
        if c.latency_p50_ms_verified is not None and c.trial in runs:
            tracker.client.log_metric(runs[c.trial], "latency_p50_ms_verified", c.latency_p50_ms_verified)
        speedup = verified_speedup(study, c.trial)
        if speedup is not None and c.trial in runs:
            for key, metric in _SPEEDUP_METRICS.items():
                tracker.client.log_metric(runs[c.trial], metric, speedup[key])
    tied = set(choice.tied) if choice is not None else set()
    for c in members:
        if c.trial in runs and choice is not None:
            # Rewritten on every pick: a re-pick with another policy may tie other members.
            tracker.client.set_tag(runs[c.trial], "slimsweep.tied_with_pick", str(c.trial in tied).lower())
    others = [c for c in everything(study) if c.trial not in numbers]
    baseline = dict(teacher(study), latency_p50_ms_verified=teacher_latency(study))
    threshold = None if policy is None else accuracy_threshold(study, policy)
    won_by = choice.won_by if choice is not None else ""
    csv_path = write_csv(
        members, exp.out / "pareto.csv", pick=pick, accuracy_threshold=threshold, tied=tied, won_by=won_by
    )
    png, page = write_charts(members, others, baseline, exp.out, pick=pick, accuracy_threshold=threshold)
    tracker.log_parent(files={"": csv_path}, tags={"slimsweep.front": ",".join(map(str, sorted(numbers)))})
    tracker.log_parent(files={"": png})
    tracker.log_parent(files={"": page})


def knobs(study: optuna.Study, most: int = 6) -> tuple[list[str], list[str]]:
    """Every knob the finished plans name (in plan order), and up to `most` that tell them apart: those taking
    more than one value, continuous ones (more than 8 values, such as a distillation temperature) left out."""
    plans = [read(t).plan for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    every = list(dict.fromkeys(k for plan in plans for k in plan))
    values = {k: {str(plan[k]) for plan in plans if k in plan} for k in every}
    return every, [k for k in every if 1 < len(values[k]) <= 8][:most]


def deliver(
    exp: Experiment,
    study: optuna.Study,
    tracker: Tracker,
    policy: PickPolicy,
    *,
    retime: Retime | None,
    output_dir: Path | None = None,
    say: Callable[[str], None] = lambda line: None,
    example: Any | None = None,
) -> Delivery:
    """Choose by policy (re-timing the front first when `retime` is given), then hand the model over as one step:
    registered from its trial's run (alias 'deployable'), deployable.onnx and model_card.json."""
    folder = output_dir or exp.out
    note = recover(folder, tracker.alias_version)
    if note:
        say(note)
    members = front(study)
    teacher_ms = teacher_latency(study)
    if retime is not None and members:
        say(
            f"verifying: timing the teacher and {len(members)} front members side by side (up to "
            f"{exp.pick.verify_seconds:g} s)"
        )
        members, teacher_ms = verify(exp, study, members, retime)
    else:
        members = with_verified(study, members)
    choice = choose(members, policy, teacher_ms)
    rounds = _loose(study, members)
    if rounds is not None:
        # Overlapping intervals tie, and the tie rule then picks on accuracy, then size: say that speed did not.
        note = capped_note(rounds, "at the sweep's target", SWEEP_REMEDY)
        choice = replace(choice, why=f"{choice.why}; note: {note}")
    c = choice.candidate
    card = model_card(exp, study, choice, policy, teacher_ms, members)
    card["registry"] = {
        "name": exp.name,
        "alias": "deployable",
        "uri": f"models:/{exp.name}@deployable",
        "tracking_uri": mask_secrets(exp.tracking_uri),
    }
    runs = tracker.trial_runs()
    source = trial_onnx_path(exp, tracker, c.trial)  # another driver's trial: fetched from its MLflow run
    # The driver after its sweep has the task in hand (`example`); `pick` and `sync` load it for these rows.
    example = input_example(exp) if example is None else example

    def register(sha: str) -> str:
        if tracker.down or c.trial not in runs:
            return ""  # MLflow is unreachable: the files are handed over now, `slimsweep sync` registers later
        found = tracker.version_for(c.trial, sha)
        if found is not None:
            # The same trial and bytes: registered once. A re-pick (another policy, a new verification) rewrites
            # its tags and description, so the version says what the card says.
            retag(tracker, found, card, sha)
            return found
        say(f"registering trial {c.trial} as {exp.name} in the MLflow Model Registry")
        return tracker.register(
            runs[c.trial],
            source,
            input_example=example,
            tags=version_tags(card, sha),
            description=version_description(card),
            model_description=model_description(card),
            metadata={"slimsweep": {"plan": card["plan"], "why": card["why"], "io": card["io"]}},
        )

    version = hand_over(
        folder, c.trial, source.read_bytes(), card, register, tracker.move_alias, alias_version=tracker.alias_version
    )
    # After the hand-over, so the front's files never mark a pick that a crash left uncommitted.
    publish_front(exp, study, tracker, members, pick=c.trial, policy=policy, choice=choice)
    card_path = folder / "model_card.json"
    speedup = {k: card[k] for k in _SPEEDUP_METRICS.values() if card[k] is not None}
    tracker.log_parent(
        files={"": card_path},
        metrics={"pick_trial": c.trial, **speedup},
        tags={
            "slimsweep.pick": str(c.trial),
            "slimsweep.pick_tied_with": ",".join(map(str, choice.tied)) or "none",
            "slimsweep.pick_won_on": choice.won_by or "the policy's own rule",
            NOTE: f"Picked trial {c.trial} ({c.plan}), registered as models:/{exp.name}@deployable "
            f"version {version}. Why: {choice.why}",
        },
    )
    tracker.mark_pick(c.trial)
    card = dict(card, registry={**card.get("registry", {}), "version": version})  # as hand_over wrote it
    return Delivery(choice, folder / "deployable.onnx", card_path, version, members, card)


# How each built-in task scales its inputs (experiments/tasks.py and experiments/readers.py), and its classes.
PREPROCESSING = {
    "digits": "scikit-learn's 8x8 digit images (pixel values 0-16) divided by 16.0, float32, channels first",
    "mnist-idx": "28x28 grayscale MNIST images (pixel values 0-255) divided by 255.0, float32, channels first",
    "cifar10": "32x32 RGB CIFAR-10 images (pixel values 0-255) divided by 255.0, float32, channels first (RGB)",
    "imagefolder": "images resized to the task's image_size, pixel values divided by 255.0, float32, channels first",
}
CLASS_NAMES = {
    "digits": [str(i) for i in range(10)],
    "mnist-idx": [str(i) for i in range(10)],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
}


def io_description(exp: Experiment, input_shape: list[int]) -> dict[str, Any]:
    """What the deployed model takes and returns, in the task's own terms."""
    name = exp.task.name
    return {
        "input": {
            "name": "input",
            "shape": ["batch", *input_shape],
            "dtype": "float32",
            "preprocessing": PREPROCESSING.get(
                name, "the task's own inputs as its data provides them (slimsweep applies no scaling)"
            ),
        },
        "output": {
            "name": "logits",
            "shape": ["batch", "classes"],
            "dtype": "float32",
            "meaning": "one unnormalised score per class (logits); the predicted label is the argmax over "
            "axis 1, probabilities are its softmax",
        },
        "class_names": CLASS_NAMES.get(name),
    }


def input_example(exp: Experiment, n: int = 2) -> Any:
    """A few validation inputs of the task, in their real scale (what the registry shows as the input example);
    loads the task: a caller that has its data passes `data.x_val[:2]` to deliver() instead."""
    from experiments.tasks import load_task

    return load_task(exp.task).data.x_val[:n]


def version_tags(card: dict[str, Any], sha: str) -> dict[str, str]:
    """Registry version tags: where the model came from and what it measured."""
    m = card["measured"]
    tags = {
        "slimsweep.trial": str(card["trial"]),
        "slimsweep.sha256": sha,
        "plan": card["plan_summary"],
        "accuracy": f"{m['accuracy']:.2f}",
        "accuracy_drop": f"{m['accuracy_drop']:.2f}",
        "latency_p50_ms_verified": ""
        if m.get("latency_p50_ms_verified") is None
        else f"{m['latency_p50_ms_verified']:.4f}",
        "speedup_vs_teacher": f"{card['speedup_vs_teacher']:.2f}",
        "speedup_interval": ""
        if card.get("speedup_ci_low") is None
        else f"[{card['speedup_ci_low']:.2f}, {card['speedup_ci_high']:.2f}] ({card['speedup_interval_covers']})",
        "tied_with": ",".join(str(t["trial"]) for t in card.get("tied_with", [])) or "none",
        "won_on": card.get("won_by") or "the policy's own rule",
        "policy": card["policy"],
        "task": card["task"],
    }
    return {k: v[:5000] for k, v in tags.items()}


def retag(tracker: Tracker, version: str, card: dict[str, Any], sha: str) -> None:
    """Set a registered version's tags and description to this card's."""
    for key, value in version_tags(card, sha).items():
        tracker.client.set_model_version_tag(tracker.name, version, key, value)
    tracker.client.update_model_version(tracker.name, version, description=version_description(card))


def version_description(card: dict[str, Any]) -> str:
    """A registry version's description: the pick, why, and how to feed it."""
    return (
        f"Trial {card['trial']}: {card['plan_summary']}. {card['why']}\n\n"
        f"Input: {card['io']['input']['preprocessing']}, shape {card['io']['input']['shape']}. "
        f"Output: {card['io']['output']['meaning']}."
    )


def model_description(card: dict[str, Any]) -> str:
    """The registered model's description: what it is for and how to call it."""
    names = card["io"]["class_names"]
    classes = f" Classes (by output index): {', '.join(names)}." if names else ""
    return (
        f"The deployable model of the slimsweep experiment {card['experiment']!r} (task {card['task']}). "
        f"Input: float32 {card['io']['input']['shape']}, {card['io']['input']['preprocessing']}. "
        f"Output: {card['io']['output']['meaning']}.{classes}"
    )


def model_card(
    exp: Experiment,
    study: optuna.Study,
    choice: Choice,
    policy: PickPolicy,
    teacher_ms: float,
    members: list[Candidate] | None = None,
) -> dict[str, Any]:
    """What was done to the model, its measured figures, the teacher's, why it was chosen, and which front members
    (of `members`) tied with it on speed."""
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
        "side_by_side": _side_by_side(study, members or []),
        "size_ratio_vs_teacher": figures["size_mb"] / c.size_mb,
        "target": masked(exp.target.model_dump()),
        "policy": policy.describe(),
        "policy_name": policy.name,
        "met_policy": choice.met_policy,
        "why": choice.why,
        "won_by": choice.won_by,
        "tied_with": [_tie(t) for t in members or [] if t.trial in choice.tied],
        "input": {"name": "input", "shape": ["batch", *baseline.input_shape], "dtype": "float32"},
        "io": io_description(exp, list(baseline.input_shape)),
    }


# Stored speed-up keys -> the metric and model-card names they go by.
_SPEEDUP_METRICS = {"speedup": "speedup_vs_teacher", "ci_low": "speedup_ci_low", "ci_high": "speedup_ci_high"}


def _speedup_fields(study: optuna.Study, c: Candidate, teacher_ms: float) -> dict[str, Any]:
    """The pick's speed-up over the teacher for the model card: side by side when verified, else said to be not."""
    s = verified_speedup(study, c.trial)
    if s is None:
        return {
            "speedup_vs_teacher": teacher_ms / c.latency,
            "speedup_ci_low": None,
            "speedup_ci_high": None,
            "speedup_clear_of_one": None,
            "speedup_method": "ratio of two medians taken apart (not verified side by side: no interval)",
            "speedup_interval_covers": None,
        }
    return {
        "speedup_vs_teacher": s["speedup"],
        "speedup_ci_low": s["ci_low"],
        "speedup_ci_high": s["ci_high"],
        "speedup_clear_of_one": s["clear_of_one"],
        "speedup_round_ci": [s["round_ci_low"], s["round_ci_high"]],
        "speedup_method": f"side by side: median of {s['rounds']} per-round ratios teacher p50 / model p50, "
        f"with the 95% interval of that median widened by ±{s['drift']:.0%} for the drift between processes "
        "(speedup_round_ci: the round-to-round interval alone, within this one process)",
        "speedup_interval_covers": INTERVAL_COVERS,
    }


def _compared(study: optuna.Study, members: list[Candidate]) -> list[dict[str, Any] | None]:
    """The stored speed-ups the pick compared members on (none when it fell back to the in-sweep medians)."""
    return [verified_speedup(study, c.trial) for c in members if c.speedup_ci_low is not None]


def _loose(study: optuna.Study, members: list[Candidate]) -> int | None:
    """The rounds of the verification the pick rests on if it stopped at its cap before its intervals narrowed."""
    return loose_rounds(_compared(study, members))


def _side_by_side(study: optuna.Study, members: list[Candidate]) -> dict[str, Any]:
    """For the model card, as retarget's says: the verification's rounds and whether its intervals narrowed in
    time (None: not verified side by side, or verified before slimsweep kept it)."""
    found = next((s for s in _compared(study, members) if s is not None), None)
    return {"rounds": None if found is None else found.get("rounds"), "intervals_narrowed": _narrowed(found)}


def _narrowed(speedup: dict[str, Any] | None) -> bool | None:
    tight = None if speedup is None else speedup.get("tight")
    return None if tight is None else bool(tight)


def _tie(c: Candidate) -> dict[str, Any]:
    """A member tied with the pick on speed, for the model card."""
    return {
        "trial": c.trial,
        "plan": c.plan,
        "accuracy": c.accuracy,
        "accuracy_drop": c.accuracy_drop,
        "size_mb": c.size_mb,
        "latency_p50_ms": c.latency,
        "speedup_vs_teacher": c.speedup,
        "speedup_ci_low": c.speedup_ci_low,
        "speedup_ci_high": c.speedup_ci_high,
    }
