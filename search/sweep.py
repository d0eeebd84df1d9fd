"""The driver: prepare what every trial shares, open the study and MLflow, time the teacher, then run the loop
(search/loop.py) on an executor (Ray's or the in-process one); resumable at any point."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Self

import optuna
import yaml
from optuna.trial import TrialState

from evaluators.errors import ConfigError
from evaluators.latency import TRIAL_TIMING, TimingSettings
from evaluators.secrets import mask_secrets
from evaluators.targets import settings_for
from experiments.tasks import load_task
from experiments.teacher import resolve_teacher, teacher_to_bytes
from search import students
from search.config import Experiment
from search.dispatch import MACHINERY, Executor
from search.fresh import STUDENTS
from search.ledger import MAX_ASKS_PER_TRIAL, Ledger
from search.loop import Loop, SweepSummary
from search.mirror import MlflowMirror, log_trial, sync_tracking
from search.progress import ProgressListener, SweepProgress
from search.study import (
    Baseline,
    beat,
    dominated,
    keep_latency,
    latency_cache,
    live_drivers,
    new_driver_id,
    on_the_way,
    open_study,
    read,
    repair,
    repeats,
    requeue,
    retire,
    set_baseline,
    set_needs_sync,
    spent,
    stale,
)
from search.telling import trial_path
from search.tracking import Tracker
from search.trial import TrialContext, teacher_figures
from spaces.knobs import values
from spaces.students import suits

# Names other modules and tests import from here.
__all__ = ["MAX_ASKS_PER_TRIAL", "SweepSummary", "log_trial", "prepare", "run_sweep", "sweep", "sync_tracking"]
__all__ += ["timing", "trial_path", "Heartbeat", "Swept"]

log = logging.getLogger("slimsweep.sweep")


def timing(exp: Experiment, **overrides: float) -> TimingSettings:
    """The target's timing settings: a trial's repeats, with any overrides."""
    return settings_for(exp.target.spec(), **{**TRIAL_TIMING, **overrides})


def prepare(exp: Experiment, say: Callable[[str], None] | None = None) -> TrialContext:
    """Load the task and get the cached (or newly trained) teacher: what every trial shares; `say` hears each step
    (None: quiet, no teacher progress either)."""
    quiet, say = say is None, say or (lambda line: None)
    say(f"loading the task {exp.task.name!r}")
    task = load_task(exp.task)
    problem = exp.quantization_only_problem() if task.onnx_only else None
    if problem:  # a plugin may bring an ONNX model too
        raise ConfigError(f"space: {problem}")
    if not task.onnx_only:
        for kind in exp.space.students.kinds():
            reason = suits(kind, task.data.input_shape)
            if reason:  # refuse up front rather than fail every trial of that family
                raise ConfigError(f"space.students.{kind}: {reason}")
    blob = None
    if not task.onnx_only:
        start = time.perf_counter()
        say("teacher: loading it from the cache, or training it (once per task and settings; this can take minutes)")
        from search.teacher_progress import TeacherProgress

        with TeacherProgress(quiet=quiet) as progress:  # epochs and accuracy while it trains, as the trials get
            teacher, cached = resolve_teacher(task, on_epoch=progress)
        say(f"teacher: {'loaded from the cache' if cached else 'ready'} in {time.perf_counter() - start:.0f} s")
        blob = teacher_to_bytes(teacher)
    ratios, schemes = set(values(exp.space.pruning.ratio)), set(exp.space.quantization.schemes)
    # Trained students kept for the pruning plans of the same student: only where some plan prunes.
    keep = exp.space.pruning.from_trained and blob is not None and any(r > 0 for r in ratios)
    return TrialContext(
        data=task.data,
        teacher_blob=blob,
        onnx_model=task.onnx_model,
        timing=timing(exp),
        seed=exp.search.seed,
        max_latency_ms=exp.constraints.max_latency_ms,
        measure_unpruned=0.0 in ratios and len(ratios) > 1,
        measure_fp32="fp32" in schemes and len(schemes) > 1,
        quantization=exp.space.quantization if exp.space.quantization.on_the_way else None,
        rungs=tuple(exp.search.early_stopping.rungs),
        students_dir=str((exp.out / STUDENTS).resolve()) if keep else None,  # Ray workers run in other folders
        students_tag=students.task_tag(blob, task.data) if keep and blob is not None else "",
    )


class Heartbeat:
    """A thread recording that this driver is alive, so no other driver takes over its trials."""

    def __init__(self, study: optuna.Study, driver: str, every_s: float) -> None:
        self.study, self.driver, self.every_s = study, driver, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slimsweep-heartbeat", daemon=True)

    def __enter__(self) -> Self:
        beat(self.study, self.driver, every_s=self.every_s)  # alive before it owns any trial; judged by its interval
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        try:
            retire(self.study, self.driver)  # gone at once, not after missed beats: `sync` may take over its runs
        except Exception as err:  # noqa: BLE001 - its beat simply goes stale; never mask the sweep's own outcome
            log.warning("could not record the driver's end: %s", err)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                beat(self.study, self.driver)
            except Exception as err:  # noqa: BLE001 - a busy database must not kill the beat; the next one retries
                log.warning("heartbeat not recorded: %s", err)


@dataclass
class Swept:
    """A sweep's outcome and what the after-sweep step (verify, pick, hand over) works with."""

    summary: SweepSummary
    study: optuna.Study
    tracker: Tracker


def run_sweep(
    exp: Experiment, executor: Executor, ctx: TrialContext, *, quiet: bool = False, offline: bool = False
) -> SweepSummary:
    """Run (or resume) the experiment's sweep until the study's budget of finished trials is reached."""
    return sweep(exp, executor, ctx, quiet=quiet, offline=offline).summary


def sweep(
    exp: Experiment,
    executor: Executor,
    ctx: TrialContext,
    *,
    quiet: bool = False,
    offline: bool = False,
    listeners: list[Any] | None = None,
) -> Swept:
    """Run (or resume) the sweep on `executor` (Ray's, or the in-process one); the study and the MLflow parent run
    stay open for the pick. `listeners` hear the loop's events beside the MLflow mirror and the progress line."""
    start = time.perf_counter()
    executor.warm(exp.search.parallel)  # workers import torch while the study, MLflow and the teacher's timing open
    study = open_study(exp)
    driver = new_driver_id()
    with Heartbeat(study, driver, exp.search.heartbeat_s):
        # Trials a dead driver left RUNNING (its heartbeat stale) run again; a live driver's are left alone.
        summary = SweepSummary(requeued=repair(study) + requeue(study, stale(study, exp.search.heartbeat_s)))
        tracker = _open_tracking(exp, driver, offline)
        mirror = MlflowMirror(tracker)
        try:
            sync_tracking(exp, study, tracker, live_drivers(study, exp.search.heartbeat_s))
            executor.seed_latencies(latency_cache(study))  # structures timed by an earlier run are not timed again
            teacher = _time_baseline(exp, executor, ctx, study, tracker)
            keep_latency(study, executor.new_latencies())
            unit, amount = exp.search.compute_budget()
            progress = SweepProgress(amount, quiet=quiet, unit=unit)
            loop = Loop(
                exp,
                executor,
                study,
                tracker,
                summary,
                teacher=teacher,
                ctx_ref=executor.put(ctx),
                driver=driver,
                ledger=_ledger(exp, study),
                n_val=len(ctx.data.y_val),
                listeners=[mirror, ProgressListener(progress), *(listeners or [])],
            )
            with progress:
                loop.run()
            summary.out_of_plans = loop.ledger.out_of_plans
            loop.ledger.sync(study)
            summary.compute = loop.ledger.spending()
            # A driver that died during this sweep may have told trials it never mirrored; the pick and the registry
            # need every finished trial's run, so they are filled now, not only at the next start.
            sync_tracking(exp, study, tracker, live_drivers(study, exp.search.heartbeat_s))
            _count(study, executor, summary, start)
            _log_statistics(tracker, summary)
            mirror.note_outage(study, summary)
            return Swept(summary, study, tracker)
        except BaseException:
            tracker.end("FAILED")  # never leave the parent RUNNING; the study keeps every finished trial
            if tracker.down:
                set_needs_sync(study, True)
            raise


def _ledger(exp: Experiment, study: optuna.Study) -> Ledger:
    """The budget's ledger: the budget in its unit (trainings unless search.budget names another)."""
    unit, amount = exp.search.compute_budget()
    return Ledger(amount, list(study.directions), unit=unit, trials=exp.search.trials)


def _open_tracking(exp: Experiment, driver: str, offline: bool) -> Tracker:
    """The sweep's MLflow parent run, created or resumed, with the experiment file attached."""
    tracker = Tracker(exp.tracking_uri, exp.name, exp.out / "mlartifacts", driver=driver, offline=offline)
    tracker.start_sweep(mask_secrets(yaml.safe_dump(exp.model_dump(), sort_keys=False)), _sweep_params(exp))
    return tracker


def _time_baseline(
    exp: Experiment, executor: Executor, ctx: TrialContext, study: optuna.Study, tracker: Tracker
) -> dict[str, float]:
    """Time the fp32 teacher at the station like every candidate, before any trial trains; store and log it."""
    executor.warmed()  # workers importing torch beside the station would slow the teacher, and flatter every speed-up
    teacher_onnx, teacher = teacher_figures(ctx, lambda m: executor.time_model(m, ctx.timing, use_cache=False))
    exp.out.mkdir(parents=True, exist_ok=True)
    (exp.out / "teacher.onnx").write_bytes(teacher_onnx)
    station = {"node": executor.where[0], "cores": executor.where[1]}
    set_baseline(study, Baseline(teacher=teacher, input_shape=list(ctx.data.input_shape), station=station))
    tracker.log_parent(
        metrics={f"teacher_{k}": v for k, v in teacher.items()},
        tags={
            "slimsweep.target": json.dumps(executor.describe_target(), default=str)[:5000],
            "slimsweep.station": json.dumps(station),
        },
    )
    return teacher


def _count(study: optuna.Study, executor: Executor, summary: SweepSummary, start: float) -> None:
    """The sweep's totals: finished, failed, reused, skipped by latency first and the training time that saved."""
    made = on_the_way(study)
    done = spent(study)
    records = {t.number: read(t) for t in done}
    summary.finished = len(done)
    summary.on_the_way = len(made)
    summary.failed = sum(t.state == TrialState.FAIL for t in done)
    kinds: dict[str, int] = {}
    for t in done:
        if t.state == TrialState.FAIL:
            kind = records[t.number].info.get(MACHINERY, "plan")
            kinds[kind] = kinds.get(kind, 0) + 1
    summary.failed_kinds = kinds
    summary.reused = len(repeats(study))
    summary.finished += summary.reused
    summary.seconds = time.perf_counter() - start
    skipped = [n for n, r in records.items() if r.skipped_training and r.reuse_of is None]
    trained = [
        r
        for t in done
        if t.state == TrialState.COMPLETE
        for r in [records[t.number]]
        if not r.skipped_training and r.reuse_of is None
    ]
    train_s = [sum(r.stages.get(k, 0.0) for k in ("distill", "prune")) for r in trained]
    summary.skipped_training = len(skipped)
    summary.dominated = len(dominated(study))
    summary.seconds_saved = len(skipped) * (sum(train_s) / len(train_s) if train_s else 0.0)
    summary.cache = executor.station_counts()


def _log_statistics(tracker: Tracker, summary: SweepSummary) -> None:
    """The totals on the MLflow parent run."""
    tracker.log_parent(
        metrics={
            "trials_finished": summary.finished,
            "trials_failed": summary.failed,
            "trials_reused": summary.reused,
            "models_on_the_way": summary.on_the_way,
            "trials_skipped_training": summary.skipped_training,
            "trials_dominated": summary.dominated,
            "training_seconds_saved_estimate": summary.seconds_saved,
            **summary.cache,
            **{f"trials_failed_{k}": v for k, v in summary.failed_kinds.items()},
            **(summary.compute.metrics() if summary.compute else {}),
        }
    )


def _sweep_params(exp: Experiment) -> dict[str, str]:
    return {
        "task": exp.task.name,
        "objectives": ",".join(exp.objectives),
        "sampler": exp.search.sampler,
        "trials": str(exp.search.trials),
        "parallel": str(exp.search.parallel),
        "seed": str(exp.search.seed),
        "target": f"{exp.target.kind} threads={exp.target.threads} batch={exp.target.batch_size}",
        "max_accuracy_drop": str(exp.constraints.max_accuracy_drop),
        "storage": mask_secrets(exp.storage_url),
        "pick_policy": exp.pick.policy,
        "budget": "{} {:g}".format(*exp.search.compute_budget()),
        "rungs": ",".join(map(str, exp.search.early_stopping.rungs)) or "off",
    }
