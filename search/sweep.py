"""The driver: ask Optuna for plans, run them as Ray tasks, tell the results, log MLflow; resumable at any point."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import yaml

from evaluators.errors import ConfigError
from evaluators.latency import TimingSettings
from evaluators.targets import TargetSpec
from experiments.tasks import load_task
from experiments.teacher import resolve_teacher, teacher_to_bytes
from search.config import Experiment
from search.executor import RayExecutor, Running
from search.progress import SweepProgress
from search.study import finished, open_study, record, requeue
from search.tracking import Tracker
from search.trial import TrialContext, TrialResult, teacher_figures
from spaces.plan import sample
from spaces.students import suits

# Trial timing: enough repeats for a stable median of a sub-millisecond model without dominating a trial.
TRIAL_TIMING = dict(warmup=20, min_repeats=50, max_seconds=1.0)


@dataclass
class SweepSummary:
    """What a sweep did in this run and in total."""

    finished: int = 0
    failed: int = 0
    ran_now: int = 0
    requeued: list[int] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0
    skipped_training: int = 0  # trials stopped by latency first, before training
    seconds_saved: float = 0.0  # their estimated training time (mean of the trials that trained)
    cache: dict[str, int] = field(default_factory=dict)  # latency-cache hits / misses at the station
    parallel: int = 0  # trials in flight at once, after the station took its cores


def trial_path(exp: Experiment, number: int) -> Path:
    """Where a trial's deployable ONNX file is kept (the driver writes it before telling Optuna)."""
    return exp.out / "trials" / f"trial-{number}.onnx"


def timing(exp: Experiment, **overrides: float) -> TimingSettings:
    """The target's timing settings."""
    return TimingSettings(threads=exp.target.threads, batch_size=exp.target.batch_size, **{**TRIAL_TIMING, **overrides})


def target_spec(exp: Experiment) -> TargetSpec:
    """The experiment's target as the evaluators know it."""
    t = exp.target
    return TargetSpec(kind=t.kind, threads=t.threads, batch_size=t.batch_size, device_id=t.device_id, url=t.url,
                      token=t.token())


def prepare(exp: Experiment) -> TrialContext:
    """Load the task and get the cached (or newly trained) teacher: what every trial shares."""
    task = load_task(exp.task)
    problem = exp.quantization_only_problem() if task.onnx_only else None
    if problem:  # a plugin may bring an ONNX model too
        raise ConfigError(f"space: {problem}")
    if not task.onnx_only:
        for kind in exp.space.students.kinds():
            reason = suits(kind, task.data.input_shape)
            if reason:  # refuse up front rather than fail every trial of that family
                raise ConfigError(f"space.students.{kind}: {reason}")
    blob = None if task.onnx_only else teacher_to_bytes(resolve_teacher(task)[0])
    return TrialContext(data=task.data, teacher_blob=blob, onnx_model=task.onnx_model, timing=timing(exp),
                        seed=exp.search.seed, max_latency_ms=exp.constraints.max_latency_ms)


def _tell(exp: Experiment, study: optuna.Study, trial: optuna.Trial, result: TrialResult, teacher: dict[str, float],
          plan_params: dict, describe: str) -> dict[str, float]:
    """Record one result: ONNX on disk first, then Optuna (the state of record); MLflow follows from both."""
    attrs = {"plan": plan_params, "describe": describe, "stages": result.stages, "info": result.info}
    if not result.ok:
        record(study, trial, values=None, constraints={}, attrs=attrs, failure=result.error or "unknown error")
        return {}
    metrics = dict(result.metrics)
    metrics["accuracy_drop"] = teacher["accuracy"] - metrics["accuracy"]
    path = trial_path(exp, trial.number)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(result.onnx or b"")
    c = exp.constraints
    constraints = {"accuracy_drop": metrics["accuracy_drop"] - c.max_accuracy_drop}
    if c.max_latency_ms is not None:
        constraints["latency_p50_ms"] = metrics["latency_p50_ms"] - c.max_latency_ms
    if c.max_size_mb is not None:
        constraints["size_mb"] = metrics["size_mb"] - c.max_size_mb
    attrs["metrics"] = metrics
    attrs["feasible"] = all(v <= 0 for v in constraints.values())
    record(study, trial, values=[metrics[o] for o in exp.objectives], constraints=constraints, attrs=attrs,
           failure=None)
    return metrics


def sync_tracking(exp: Experiment, study: optuna.Study, tracker: Tracker) -> int:
    """Log every finished trial MLflow lacks (a crash between Optuna and MLflow loses nothing); return how many."""
    logged = tracker.logged_trials()
    missing = [t for t in finished(study) if t.number not in logged]
    for t in missing:
        log_trial(exp, tracker, t)
    return len(missing)


def log_trial(exp: Experiment, tracker: Tracker, t: optuna.trial.FrozenTrial) -> None:
    """Mirror one finished trial, as Optuna holds it, to its nested MLflow run."""
    path = trial_path(exp, t.number)
    metrics = t.user_attrs.get("metrics", {})
    stage_metrics = {f"stage_{k}_s": v for k, v in t.user_attrs.get("stages", {}).items()}
    info = t.user_attrs.get("info", {})
    tags = {"slimsweep.feasible": str(t.user_attrs.get("feasible", False)).lower(),
            "slimsweep.skipped_training": str(bool(info.get("skipped_training"))).lower()}
    if "latency_cache" in info:
        tags["slimsweep.latency_cache"] = info["latency_cache"]
    tracker.log_trial(
        t.number, t.user_attrs.get("plan", t.params), {**metrics, **stage_metrics},
        onnx=path.read_bytes() if metrics and path.is_file() else None,
        failed_reason=t.user_attrs.get("slimsweep.failure") if t.state.name == "FAIL" else None,
        tags=tags,
    )


def run_sweep(exp: Experiment, executor: RayExecutor, ctx: TrialContext, *, quiet: bool = False) -> SweepSummary:
    """Run (or resume) the experiment's sweep until its budget of finished trials is reached."""
    start = time.perf_counter()
    summary = SweepSummary()
    study = open_study(exp)
    summary.requeued = requeue(study)  # trials a dead driver left RUNNING
    tracker = Tracker(exp.tracking_uri, exp.name, exp.out / "mlartifacts")
    tracker.start_sweep(yaml.safe_dump(exp.model_dump(), sort_keys=False), _sweep_params(exp))
    try:
        return _sweep(exp, executor, ctx, study, tracker, summary, start, quiet)
    except BaseException:
        tracker.end("FAILED")  # never leave the parent RUNNING; the study keeps every finished trial
        raise


def _sweep(exp: Experiment, executor: RayExecutor, ctx: TrialContext, study: optuna.Study, tracker: Tracker,
           summary: SweepSummary, start: float, quiet: bool) -> SweepSummary:
    sync_tracking(exp, study, tracker)
    # The baseline is timed at the station like every candidate, before any trial trains.
    teacher_onnx, teacher = teacher_figures(ctx, lambda m: executor.time_model(m, ctx.timing, use_cache=False))
    (exp.out / "teacher.onnx").write_bytes(teacher_onnx)
    study.set_user_attr("teacher", teacher)
    study.set_user_attr("input_shape", list(ctx.data.input_shape))
    station = {"node": executor.where[0], "cores": executor.where[1]}
    study.set_user_attr("station", station)
    target = executor.describe_target()
    tracker.log_parent(metrics={f"teacher_{k}": v for k, v in teacher.items()},
                       tags={"slimsweep.target": json.dumps(target, default=str)[:5000],
                             "slimsweep.station": json.dumps(station)})
    ctx_ref = executor.put(ctx)

    budget = exp.search.trials
    # The station holds its cores; more trials in flight than CPUs left would only queue inside Ray.
    parallel = max(1, min(exp.search.parallel, executor.trial_cpus()))
    summary.parallel = parallel
    running: list[Running] = []
    trials: dict[int, tuple[optuna.Trial, dict, str]] = {}
    progress = SweepProgress(budget, quiet=quiet)
    try:
        with progress:
            while True:
                done = finished(study)
                while len(running) < parallel and len(done) + len(running) < budget:
                    trial = study.ask()
                    plan = sample(trial, exp.space)
                    trials[trial.number] = (trial, plan.params(), plan.describe())
                    running.append(executor.submit(trial.number, plan, ctx_ref))
                _refresh(progress, study, done, running)
                if not running:
                    break
                for item, result in executor.wait(running, timeout=1.0):
                    running.remove(item)
                    trial, params, describe = trials.pop(item.number)
                    metrics = _tell(exp, study, trial, result, teacher, params, describe)
                    log_trial(exp, tracker, study.get_trials(deepcopy=False)[item.number])
                    summary.ran_now += 1
                    _refresh(progress, study, finished(study), running)
                    progress.trial_done(item.number, describe, metrics, result.error,
                                        skipped=bool(result.info.get("skipped_training")))
    except KeyboardInterrupt:
        executor.cancel(running)
        requeue(study, [r.number for r in running])
        summary.interrupted = True
        tracker.end("KILLED")
    done = finished(study)
    summary.finished = len(done)
    summary.failed = sum(t.state.name == "FAIL" for t in done)
    summary.seconds = time.perf_counter() - start
    skipped = [t for t in done if t.user_attrs.get("info", {}).get("skipped_training")]
    skipped_numbers = {t.number for t in skipped}
    trained = [t for t in done if t.state.name == "COMPLETE" and t.number not in skipped_numbers]
    train_s = [sum(t.user_attrs["stages"].get(k, 0.0) for k in ("distill", "prune")) for t in trained]
    summary.skipped_training = len(skipped)
    summary.seconds_saved = len(skipped) * (sum(train_s) / len(train_s) if train_s else 0.0)
    summary.cache = executor.station_counts()
    tracker.log_parent(metrics={"trials_finished": summary.finished, "trials_failed": summary.failed,
                                "trials_skipped_training": summary.skipped_training,
                                "training_seconds_saved_estimate": summary.seconds_saved, **summary.cache})
    return summary


def _refresh(progress: SweepProgress, study: optuna.Study, done: list, running: list) -> None:
    progress.update(done=len(done), failed=sum(t.state.name == "FAIL" for t in done), running=len(running),
                    front=len(study.best_trials) if done else 0)


def _sweep_params(exp: Experiment) -> dict[str, str]:
    return {
        "task": exp.task.name, "objectives": ",".join(exp.objectives), "sampler": exp.search.sampler,
        "trials": str(exp.search.trials), "parallel": str(exp.search.parallel), "seed": str(exp.search.seed),
        "target": f"{exp.target.kind} threads={exp.target.threads} batch={exp.target.batch_size}",
        "max_accuracy_drop": str(exp.constraints.max_accuracy_drop), "storage": exp.storage_url,
    }
